"""What the one training loop costs, measured side by side in one run.

1. Loop overhead: a full-tower DPO step of the embedded MiniCLIP through ``fit`` against a bare hand-written loop
   doing the same work on the same batch (the same images every step, reference logits cached, Adamax, warm-up +
   cosine schedule). Target: ≤ 1.03×.
2. Data parallelism: full-tower DPO with 2 processes of 1 thread (``accelerate launch``, gloo) against 1 process
   of 2 threads, same global batch, images per second.
3. Memory: peak resident memory of full-tower DPO on a 20,000-image folder (decoded lazily) against a
   2,000-image one: bounded means about the same, not 10× more.

    python benchmarks/bench_engine.py [--steps 20] [--batch 64] [--skip-memory] [--skip-parallel]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from vlalign.data.datasets import ImageFolderDataset, PreferenceView, TensorImageDataset
from vlalign.data.folder import export_image_set
from vlalign.data.mini_world import MiniWorld
from vlalign.data.preference import typographic_preference_data
from vlalign.losses.objectives import preference_objective
from vlalign.models.loading import load_model
from vlalign.reporting.tables import markdown_table
from vlalign.training.loop import fit
from vlalign.training.methods.preference import ContrastivePreference, PreferenceConfig
from vlalign.training.schedule import warmup_cosine
from vlalign.training.train_config import TrainConfig

CONFIG = PreferenceConfig(method="dpo", trainable="full", beta=0.3, lam=0.0)


def _method(batch: int) -> ContrastivePreference:
    pref, _ = typographic_preference_data(batch, 1, seed=1)
    data = TensorImageDataset(pref.images, chosen=pref.chosen, rejected=pref.rejected)
    return ContrastivePreference(load_model("mini"), data, pref.prompts, None, CONFIG)


def engine_seconds_per_step(batch: int, steps: int) -> float:
    """Per-step time of ``fit`` (the difference of two run lengths cancels the set-up: frozen quantities etc.)."""
    def run(n: int) -> float:
        method = _method(batch)
        start = time.perf_counter()
        fit(method, TrainConfig(steps=n, batch_size=batch, log_every=10), progress=False)
        return time.perf_counter() - start

    short, long = run(2), run(2 + steps)
    return (long - short) / steps


def bare_seconds_per_step(batch: int, steps: int) -> float:
    """The same step written out by hand: no data loader, no checks, no logging, no checkpoints."""
    method = _method(batch)
    method.prepare(torch.device("cpu"))
    model, frozen = method.policy, method.frozen
    pref, _ = typographic_preference_data(batch, 1, seed=1)
    pixels_u8, chosen, rejected = pref.images, pref.chosen, pref.rejected
    params = [p for p in model.image_encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.Adamax(params, lr=CONFIG_LR)
    scheduler = warmup_cosine(optimizer, steps + 1, 0.1)
    objective, p = preference_objective("dpo"), CONFIG.objective_params()
    model.train()

    def step() -> None:
        pixels = pixels_u8.float().div_(255.0)
        logits = frozen["scale"] * model.encode_image(pixels) @ frozen["pref_text"].t()
        loss = objective(logits, frozen["pref_reference"], chosen, rejected, p)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


CONFIG_LR = 1e-4  # the method's default for the full tower


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parallel_images_per_second(batch: int, steps: int) -> tuple[float, float]:
    """(1 process × 2 threads, 2 processes × 1 thread): training images per second of full-tower DPO."""
    script = Path(__file__).resolve()
    results = []
    for processes in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "OMP_NUM_THREADS": str(2 // processes), "CUDA_VISIBLE_DEVICES": ""}
            out = Path(tmp) / "rate.json"
            worker = [str(script), "--worker", str(out), "--batch", str(batch), "--steps", str(steps),
                      "--threads", str(2 // processes)]
            if processes == 1:
                command = [sys.executable, *worker]
            else:
                command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", str(_free_port()), *worker]
            subprocess.run(command, check=True, env=env, capture_output=True, text=True)
            results.append(json.loads(out.read_text())["images_per_second"])
    return results[0], results[1]


def _worker(out: Path, batch: int, steps: int, threads: int) -> None:
    from vlalign.training import distributed

    torch.set_num_threads(threads)
    pref, _ = typographic_preference_data(4 * batch, 1, seed=2)
    data = TensorImageDataset(pref.images, chosen=pref.chosen, rejected=pref.rejected)

    def run(n: int) -> float:
        method = ContrastivePreference(load_model("mini"), data, pref.prompts, None, CONFIG)
        start = time.perf_counter()
        fit(method, TrainConfig(steps=n, batch_size=batch, log_every=10), progress=False)
        return time.perf_counter() - start

    seconds = run(2 + steps) - run(2)
    if distributed.rank() == 0:
        out.write_text(json.dumps({"images_per_second": steps * batch / seconds}))


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
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        return json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]


def _memory_worker(folder: Path, steps: int, batch: int) -> None:
    torch.set_num_threads(2)
    model = load_model("mini")
    data = ImageFolderDataset(folder, model.image_size)
    prompts = tuple(f"a photo of a {c}" for c in data.classnames)
    method = ContrastivePreference(model, PreferenceView(data), prompts, None, CONFIG)
    fit(method, TrainConfig(steps=steps, batch_size=batch, num_workers=1), progress=False)
    print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-parallel", action="store_true")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args.worker, args.batch, args.steps, args.threads)
    if args.memory_worker:
        return _memory_worker(args.memory_worker, args.steps, args.batch)
    torch.set_num_threads(args.threads)
    rows = []
    bare = bare_seconds_per_step(args.batch, args.steps)
    engine = engine_seconds_per_step(args.batch, args.steps)
    rows.append(["full-tower DPO step: fit vs bare loop", f"MiniCLIP, batch {args.batch}, {args.threads} threads",
                 f"{1000 * engine:.0f} ms vs {1000 * bare:.0f} ms", f"{engine / bare:.3f}×"])
    if not args.skip_parallel:
        one, two = parallel_images_per_second(args.batch, args.steps)
        rows.append(["full-tower DPO: 2 processes × 1 thread vs 1 process × 2 threads",
                     f"MiniCLIP, global batch {args.batch}", f"{two:.0f} vs {one:.0f} images/s", f"{two / one:.2f}×"])
    if not args.skip_memory:
        small, large = peak_memory_mib(2000, 3, args.batch), peak_memory_mib(20000, 3, args.batch)
        rows.append(["peak memory: 20,000-image folder vs 2,000", f"MiniCLIP full-tower DPO, batch {args.batch}",
                     f"{large:.0f} MiB vs {small:.0f} MiB", f"{large / small:.2f}×"])
    print(markdown_table(["what", "setting", "measured", "ratio"], rows))


if __name__ == "__main__":
    main()
