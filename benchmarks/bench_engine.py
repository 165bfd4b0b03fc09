"""What the one training loop costs, measured side by side in one run.

1. Loop overhead: a full-tower DPO step of the embedded MiniCLIP through ``fit`` against a bare hand-written loop
   calling the same method's ``forward`` on the same batch (reference logits cached, Adamax, warm-up + cosine
   schedule); the median step of each run, timed between successive calls of ``forward``. Target: ≤ 1.03×.
2. Data parallelism: full-tower DPO with 2 processes of 1 thread (``accelerate launch``, gloo) against 1 process
   of 2 threads, same global batch, images per second of the median step.
3. Memory: peak resident memory of full-tower DPO on a 20,000-image folder (decoded lazily) against a
   2,000-image one: bounded means about the same, not 10× more.

    python -m benchmarks --only loop,parallel,memory

All three run on the CPU whatever ``--device`` says (the workers are started with no visible GPU), and their rows
say so. This file is also the entry point of the worker processes (started by path, with the repository on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import PeakMemory, Row, Settings, time_row, timing_from_rounds
from vlalign.data.datasets import ImageFolderDataset, PreferenceView, TensorImageDataset
from vlalign.data.folder import export_image_set
from vlalign.data.mini_world import MiniWorld
from vlalign.data.preference import typographic_preference_data
from vlalign.models.loading import load_model
from vlalign.training.loop import fit
from vlalign.training.methods.preference import ContrastivePreference, PreferenceConfig
from vlalign.training.schedule import warmup_cosine
from vlalign.training.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
CONFIG = PreferenceConfig(method="dpo", trainable="full", beta=0.3, lam=0.0)


def _method(batch: int) -> ContrastivePreference:
    pref, _ = typographic_preference_data(batch, 1, seed=1)
    data = TensorImageDataset(pref.images, chosen=pref.chosen, rejected=pref.rejected)
    return ContrastivePreference(load_model("mini"), data, pref.prompts, None, CONFIG)


class StepClock:
    """Times the steps of a loop from outside: a forward pre-hook on the method notes when each step begins, so
    the gap between two starts is one whole step (data, forward, backward, optimizer, logging). The median gap,
    after the first ``skip``, is robust to a neighbour's job stealing the CPU for a moment."""

    def __init__(self, module: torch.nn.Module, skip: int = 2) -> None:
        self.starts: list[float] = []
        self.skip = skip
        self._handle = module.register_forward_pre_hook(lambda *_: self.starts.append(time.perf_counter()))

    def seconds_per_step(self, end: float) -> float:
        self._handle.remove()
        marks = [*self.starts, end]
        gaps = sorted(b - a for a, b in zip(marks[self.skip:], marks[self.skip + 1:]))
        return gaps[len(gaps) // 2]


def engine_seconds_per_step(batch: int, steps: int) -> float:
    """Median time of a step of ``fit`` (the gap between two calls of the method's forward)."""
    method = _method(batch)
    clock = StepClock(method)
    fit(method, TrainConfig(steps=steps + 2, batch_size=batch, log_every=10), progress=False)
    return clock.seconds_per_step(time.perf_counter())


def bare_seconds_per_step(batch: int, steps: int) -> float:
    """The same step written out by hand (the method's forward, no data loader, no checks, no logging, no
    checkpoints), timed the same way, with the optimizer and schedule ``fit`` would use for this method (its
    defaults, read from the library, so the two sides cannot drift apart)."""
    method = _method(batch)
    method.prepare(torch.device("cpu"))
    pref, _ = typographic_preference_data(batch, 1, seed=1)
    batch_dict = {"pref": {"pixels": pref.images, "chosen": pref.chosen, "rejected": pref.rejected,
                           "index": torch.arange(batch)}, "step": 0, "seed": 0}
    train = TrainConfig(steps=steps + 2, batch_size=batch).resolved(method.default_train)
    if train.optimizer != "adamax" or train.schedule != "cosine":
        raise RuntimeError(f"the bare loop writes out Adamax and a warm-up + cosine schedule; fit now uses "
                           f"{train.optimizer} and {train.schedule}: update bare_seconds_per_step")
    optimizer = torch.optim.Adamax(method.param_groups(train.weight_decay), lr=train.lr, betas=train.betas)
    scheduler = warmup_cosine(optimizer, train.steps, train.warmup_fraction)
    method.train()
    clock = StepClock(method)
    for _ in range(steps + 2):
        loss = method(batch_dict)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return clock.seconds_per_step(time.perf_counter())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: (processes, threads per process) of the data-parallel comparison.
LAYOUTS = {"1 process x 2 threads": (1, 2), "1 process x 1 thread": (1, 1), "2 processes x 1 thread": (2, 1)}


def parallel_images_per_second(batch: int, steps: int) -> dict[str, dict[str, float]]:
    """Per layout of :data:`LAYOUTS`: training images per second of full-tower DPO (global batch ``batch``) and
    the peak resident memory of the (first) process, ``{"images_per_second": …, "peak_mib": …}``."""
    script = Path(__file__).resolve()
    results = {}
    for name, (processes, threads) in LAYOUTS.items():
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": "",
                   "PYTHONPATH": str(REPO)}
            out = Path(tmp) / "rate.json"
            worker = [str(script), "--worker", str(out), "--batch", str(batch), "--steps", str(steps),
                      "--threads", str(threads)]
            if processes == 1:
                command = [sys.executable, *worker]
            else:
                command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                           str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", str(_free_port()), *worker]
            subprocess.run(command, check=True, env=env, capture_output=True, text=True, cwd=REPO)
            results[name] = json.loads(out.read_text())
    return results


def _worker(out: Path, batch: int, steps: int, threads: int) -> None:
    from vlalign.training import distributed

    torch.set_num_threads(threads)
    pref, _ = typographic_preference_data(4 * batch, 1, seed=2)
    data = TensorImageDataset(pref.images, chosen=pref.chosen, rejected=pref.rejected)

    method = ContrastivePreference(load_model("mini"), data, pref.prompts, None, CONFIG)
    clock = StepClock(method)
    fit(method, TrainConfig(steps=steps + 2, batch_size=batch, log_every=10), progress=False)
    seconds = clock.seconds_per_step(time.perf_counter())
    if distributed.rank() == 0:
        out.write_text(json.dumps({"images_per_second": batch / seconds, "peak_mib": peak_rss_mib()}))


def peak_memory_mib(n_images: int, steps: int, batch: int) -> float:
    """Peak RSS (MiB) of a fresh process that trains full-tower DPO for ``steps`` on an ``n_images`` folder."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "folder"
        world, chunk = MiniWorld(), 2000
        for start in range(0, n_images, chunk):  # rendered and written in chunks: the writer stays small too
            part = world.sample("typographic", min(chunk, n_images - start), 7, start=start)
            export_image_set(part, Path(tmp) / f"part{start}")
            (folder / "images").mkdir(parents=True, exist_ok=True)
            lines = []
            for line in (Path(tmp) / f"part{start}" / "metadata.jsonl").read_text().splitlines():
                record = json.loads(line)
                name = f"images/{start + int(record['file_name'][7:13]):06d}.png"
                (Path(tmp) / f"part{start}" / record["file_name"]).rename(folder / name)
                lines.append(json.dumps({**record, "file_name": name}))
            with (folder / "metadata.jsonl").open("a") as handle:
                handle.write("\n".join(lines) + "\n")
        (folder / "classes.json").write_text(json.dumps(list(world.classnames)))
        command = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", str(folder), "--steps", str(steps),
                   "--batch", str(batch)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        done = subprocess.run(command, check=True, capture_output=True, text=True, env=env, cwd=REPO)
        return json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]


def _memory_worker(folder: Path, steps: int, batch: int) -> None:
    torch.set_num_threads(2)
    model = load_model("mini")
    data = ImageFolderDataset(folder, model.image_size)
    prompts = tuple(f"a photo of a {c}" for c in data.classnames)
    method = ContrastivePreference(model, PreferenceView(data), prompts, None, CONFIG)
    fit(method, TrainConfig(steps=steps, batch_size=batch, num_workers=1), progress=False)
    print(json.dumps({"peak_mib": peak_rss_mib()}))


def peak_rss_mib() -> float:
    """This process's peak resident set size since it started its program (``VmHWM``). Not ``ru_maxrss``: that
    survives ``exec`` on Linux, so a worker forked from a large parent would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_loop(settings: Settings) -> list[Row]:
    """fit vs the bare loop, interleaved round by round (each round: one bare measurement, one fit measurement)."""
    batch, steps = settings.pick(64, 8), settings.pick(10, 2)
    rounds, peaks, growth = [], {"fit": 0.0, "bare loop": 0.0}, {"fit": 0.0, "bare loop": 0.0}
    for _ in range(settings.repeats):
        measured = {}
        for name, function in (("bare loop", bare_seconds_per_step), ("fit", engine_seconds_per_step)):
            with PeakMemory() as memory:
                measured[name] = function(batch, steps)
            peaks[name], growth[name] = max(peaks[name], memory.peak), max(growth[name], memory.growth)
        rounds.append(measured)
    timing = timing_from_rounds(rounds, "bare loop", peaks, growth)
    row = time_row("loop", "full-tower DPO step, median over a run: fit (data loader, finite check, logging, "
                   "schedule) vs a bare hand-written loop calling the same method", timing, "fit", "bare loop",
                   model="MiniCLIP (64 px, embedded)", batch=batch, settings=settings, target=1.03, device="cpu")
    row.extra["steps_per_measurement"] = steps
    return [row]


def run_parallel(settings: Settings) -> list[Row]:
    """2 processes x 1 thread vs 1 process x 2 threads and vs 1 process x 1 thread, in turn, each a fresh launch."""
    batch, steps = settings.pick(64, 8), settings.pick(10, 2)
    rounds, peaks = [], {name: 0.0 for name in LAYOUTS}
    for _ in range(max(1, settings.repeats // 2 + 1) if not settings.quick else 1):
        measured = parallel_images_per_second(batch, steps)
        rounds.append({name: 1 / m["images_per_second"] for name, m in measured.items()})
        peaks = {name: max(peaks[name], measured[name]["peak_mib"]) for name in LAYOUTS}
    rows = []
    two = "2 processes x 1 thread"
    for baseline in ("1 process x 2 threads", "1 process x 1 thread"):
        timing = timing_from_rounds(rounds, baseline, peaks, {})
        ratios = sorted(1 / r for r in timing.ratios[two])
        rows.append(Row("parallel", f"full-tower DPO step through fit: {two} (accelerate launch, gloo) vs {baseline}, "
                        "same global batch", two, baseline, "MiniCLIP (64 px, embedded)", batch, "1 or 2 per process",
                        "cpu", "training images/s", 1 / timing.median(two), 1 / timing.median(baseline),
                        1 / timing.ratio(two), (ratios[0], ratios[-1]), len(ratios),
                        peak_mib={two: peaks[two], baseline: peaks[baseline]},
                        extra={"median_of_steps": steps, "memory": "peak RSS (VmHWM) of rank 0 / the process"}))
    return rows


def run_memory(settings: Settings) -> list[Row]:
    """Peak RSS of a fresh training process on a large folder vs a folder a tenth of its size."""
    batch = settings.pick(64, 8)
    small_n, large_n = settings.pick(2000, 20), settings.pick(20000, 200)
    small, large = peak_memory_mib(small_n, 3, batch), peak_memory_mib(large_n, 3, batch)
    row = Row("memory", f"peak resident memory of full-tower DPO (3 steps, images decoded lazily): {large_n:,}-image "
              f"folder vs {small_n:,}", f"{large_n} images", f"{small_n} images", "MiniCLIP (64 px, embedded)", batch,
              2, "cpu", "peak MiB", large, small, large / small, target="≤ 1.5× (bounded)",
              met=large / small <= 1.5, peak_mib={f"{large_n} images": large, f"{small_n} images": small})
    return [row]


def main() -> None:
    parser = argparse.ArgumentParser(description="worker processes of the engine benchmark (see python -m benchmarks)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", type=Path)
    parser.add_argument("--memory-worker", type=Path)
    args = parser.parse_args()
    if args.worker:
        return _worker(args.worker, args.batch, args.steps, args.threads)
    if args.memory_worker:
        return _memory_worker(args.memory_worker, args.steps, args.batch)
    parser.error("run the benchmarks with python -m benchmarks --only loop,parallel,memory")


if __name__ == "__main__":
    main()
