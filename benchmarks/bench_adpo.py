"""AdPO step vs FARE step on the same image tower and batch, through the one loop.

``python -m benchmarks --only adpo`` gives the interleaved row (see :func:`run_adpo`); standalone, with options:
``python -m benchmarks.bench_adpo [--vlm mini-vlm | DIR] [--batch 32] [--steps 8] [--images 64]
[--threads 1]``.

Without ``--vlm`` (or with a VLM that is not shipped) the VLM is built from ``configs/pretrain_vlm.yaml``'s model
section on the `mini` MiniCLIP tower (the shipped VLMs' tower) with a random projector and decoder: the compute of a
step does not depend on the decoder's training. FARE trains the MiniCLIP's tower with PGD-10 at 4/255
(``RobustFinetune``); AdPO trains the same tower inside the VLM, with pairs computed once on the reference
(``attack_on: reference``) and with online pairs (``attack_on: policy``: PGD-10 on the current encoder, a greedy
generation and a reference scoring inside every step). The table gives the median seconds per optimizer step (timed
between successive steps, so neither the warm-up step nor ``fit``'s set-up counts: FARE's reference embeddings,
AdPO's pairs), the one-off pair precomputation per image of the first (PGD-10 on the reference, two greedy
generations, two reference scorings), and the ratios. Numbers are wall-clock: run on an otherwise idle machine.
Everything runs on the CPU.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.bench_engine import StepClock
from benchmarks.common import PeakMemory, Row, Settings, time_row, timing_from_rounds
from vlalign.config import load_config
from vlalign.data.datasets import TensorImageDataset
from vlalign.data.mini_world import MiniWorld
from vlalign.data.vqa import MiniCaptions, MiniVQA, vlm_vocabulary
from vlalign.models.loading import load_model
from vlalign.models.mini_vlm import mini_vlm_from_clip
from vlalign.reporting.tables import markdown_table
from vlalign.training.loop import fit
from vlalign.training.methods.adpo import AdPO, AdPOConfig, PromptedImages
from vlalign.training.methods.robust import RobustConfig, RobustFinetune
from vlalign.training.train_config import TrainConfig

#: The VLM shape the benchmark builds when no ``--vlm`` is given (found from the repository, not the current folder).
VLM_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pretrain_vlm.yaml"


def build_vlm(spec: str | None):
    """The ``mini`` MiniCLIP and a VLM on its tower: ``spec`` loaded, or built from :data:`VLM_CONFIG`'s model
    section with a random projector and decoder."""
    clip = load_model("mini")  # the tower the shipped mini VLMs read
    if spec:
        from vlalign.models.vlm_loading import load_vlm

        return clip, load_vlm(spec)
    from vlalign.pipelines.pretrain_vlm import PretrainVLMConfig

    shape = load_config(VLM_CONFIG, PretrainVLMConfig).model
    torch.manual_seed(0)
    return clip, mini_vlm_from_clip(clip, vlm_vocabulary(), hidden_size=shape.hidden_size, layers=shape.layers,
                                    heads=shape.heads, intermediate_size=shape.intermediate_size,
                                    token_merge=shape.token_merge, feature_layer=shape.feature_layer).eval()


def timed_fit(method, loop: TrainConfig) -> float:
    """Median seconds per step over ``loop.steps`` steps of a fit of ``loop.steps + 1``, timed between successive
    calls of the method's forward (:class:`~benchmarks.bench_engine.StepClock`): the first (warm-up) step and what
    ``fit`` does before it (``prepare``, which recomputes FARE's reference embeddings of every image) are not
    counted, so neither method pays a precomputation inside the timing."""
    clock = StepClock(method, skip=1)
    fit(method, replace(loop, steps=loop.steps + 1), progress=False)
    return clock.seconds_per_step(time.perf_counter())


def build_methods(vlm_spec: str | None, batch: int, n_images: int) -> tuple[RobustFinetune, AdPO, AdPO, float]:
    """FARE on the MiniCLIP tower, AdPO on the VLM with pairs on the reference and with online pairs (each
    prepared), and the reference pairs' precomputation in seconds per image; both train on ``n_images`` images."""
    if not 1 <= batch <= n_images:
        raise ValueError(f"need 1 <= batch <= n_images (each method trains on n_images), got {batch} and {n_images}")
    clip, vlm = build_vlm(vlm_spec)
    images = MiniWorld().sample("clean", n_images, 10000)
    fare = RobustFinetune(clip, TensorImageDataset(images.images, label=images.labels), images.classnames,
                          RobustConfig(method="fare", eps="4/255", attack_steps=10))
    n_captions = max(1, n_images // 5)
    data = PromptedImages(MiniVQA(n_images - n_captions, 500), MiniCaptions(n_captions, 500))
    method = AdPO(copy.deepcopy(vlm), data, AdPOConfig(loss="dpo", eps="4/255", attack_steps=10))
    method.progress = False
    began = time.perf_counter()
    method.prepare(torch.device("cpu"))
    seconds = (time.perf_counter() - began) / len(data)
    online = AdPO(copy.deepcopy(vlm), data, AdPOConfig(loss="dpo", eps="4/255", attack_steps=10, attack_on="policy"))
    online.progress = False
    online.prepare(torch.device("cpu"))
    return fare, method, online, seconds


def run_adpo(settings: Settings) -> list[Row]:
    """The runner's ``adpo`` row: seconds per AdPO step vs per FARE step, interleaved round by round."""
    batch, steps, n_images = settings.pick(32, 4), settings.pick(5, 1), settings.pick(64, 8)
    fare, adpo, online, precompute = build_methods(None, batch, n_images)
    loop = TrainConfig(steps=steps, batch_size=batch, lr=3e-4, weight_decay=1e-4, log_every=steps)
    variants = (("FARE step", fare), ("AdPO step", adpo), ("AdPO online step", online))
    rounds, peaks, growth = [], {name: 0.0 for name, _ in variants}, {name: 0.0 for name, _ in variants}
    for _ in range(settings.pick(settings.repeats, 2)):
        measured = {}
        for name, method in variants:
            with PeakMemory() as memory:
                measured[name] = timed_fit(copy.deepcopy(method), loop)  # fit leaves its model frozen
            peaks[name], growth[name] = max(peaks[name], memory.peak), max(growth[name], memory.growth)
        rounds.append(measured)
    timing = timing_from_rounds(rounds, "FARE step", peaks, growth)
    return [time_row("adpo", "AdPO step (policy on x and x_adv, 3 scorings, update) vs FARE step (PGD-10 + update), "
                     "same tower and batch", timing, "AdPO step", "FARE step",
                     model="mini tower; VLM built from configs/pretrain_vlm.yaml", batch=batch, settings=settings,
                     target=2.5, device="cpu",
                     extra={"pairs_seconds_per_batch": precompute * batch, "steps_per_measurement": steps,
                            "pairs_vs_fare_step": precompute * batch / timing.median("FARE step")}),
            time_row("adpo", "AdPO step with online pairs (PGD-10 on the current encoder, y_l generated, reference "
                     "scoring, then the step) vs FARE step, same tower and batch", timing, "AdPO online step",
                     "FARE step", model="mini tower; VLM built from configs/pretrain_vlm.yaml", batch=batch,
                     settings=settings, target=2.5, device="cpu", extra={"steps_per_measurement": steps})]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vlm", default=None, help="a VLM spec (default: built from configs/pretrain_vlm.yaml)")
    parser.add_argument("--batch", type=int, default=32, help="images per step (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps (default: %(default)s)")
    parser.add_argument("--images", type=int, default=64,
                        help="training images of each method, >= --batch (AdPO's pairs precomputed once; "
                             "default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    args = parser.parse_args(argv)
    for option, value in (("--batch", args.batch), ("--steps", args.steps), ("--images", args.images),
                          ("--threads", args.threads)):
        if value < 1:
            parser.error(f"{option}: expected a whole number >= 1, got {value}")
    if args.images < args.batch:
        parser.error(f"--images: expected at least one batch (--batch {args.batch}) of training images, "
                     f"got {args.images}")
    torch.set_num_threads(args.threads)
    loop = TrainConfig(steps=args.steps, batch_size=args.batch, lr=3e-4, weight_decay=1e-4, log_every=args.steps)
    fare, method, online, precompute = build_methods(args.vlm, args.batch, args.images)
    fare_step = timed_fit(fare, loop)
    adpo_step = timed_fit(method, loop)
    online_step = timed_fit(online, loop)

    rows = [["FARE step (PGD-10 + update, MiniCLIP tower)", f"{fare_step:.3f}", "1.00"],
            ["AdPO step (policy pass on x and x_adv, 3 scorings, update)", f"{adpo_step:.3f}",
             f"{adpo_step / fare_step:.2f}"],
            ["AdPO step, online pairs (PGD-10 on the current encoder, 1 generation, reference scoring, step)",
             f"{online_step:.3f}", f"{online_step / fare_step:.2f}"],
            [f"AdPO pairs per batch of {args.batch} (one-off: PGD-10, 2 generations, 2 reference scorings)",
             f"{precompute * args.batch:.3f}", f"{precompute * args.batch / fare_step:.2f}"]]
    print(f"batch {args.batch}, {args.steps} timed steps, {args.threads} thread(s), VLM "
          f"{args.vlm or 'built from configs/pretrain_vlm.yaml'}")
    print(markdown_table(["what", "seconds", "× FARE step"], rows))


if __name__ == "__main__":
    main()
