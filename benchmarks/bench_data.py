"""Mini-world generation speed: images per second for each split kind, one process and a worker pool.

Run: ``python benchmarks/bench_data.py [--n 2000] [--workers 2]``. ``MiniWorld.sample`` only uses its process
pool from 2000 images on, so smaller ``--n`` measures the single-process path twice. Timings include the
pool's start-up (spawned interpreters importing torch), which is what a caller pays.
"""

from __future__ import annotations

import argparse
import time

from vlalign.data.mini_world import MiniWorld
from vlalign.reporting.tables import markdown_table

SPLITS = ("pretrain", "clean", "typographic", "matching")


def images_per_second(world: MiniWorld, split: str, n: int, workers: int, repeats: int) -> float:
    """Best of ``repeats`` runs, in images per second."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        world.sample(split, n, seed=0, workers=workers)
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="images per measurement (the pool needs >= 2000)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()

    from vlalign.data.mini_world import WorldConfig

    world = MiniWorld(WorldConfig(image_size=args.image_size))
    world.sample("typographic", 16, seed=0)  # warm the font cache
    rows = []
    for split in SPLITS:
        single = images_per_second(world, split, args.n, 1, args.repeats)
        pooled = images_per_second(world, split, args.n, args.workers, args.repeats)
        rows.append([split, f"{single:.0f}", f"{pooled:.0f}", f"{pooled / single:.2f}x"])
    print(f"mini-world generation, {args.n} images of {args.image_size}px per measurement\n")
    print(markdown_table(["split", "images/s (1 process)", f"images/s ({args.workers} workers)", "ratio"], rows))


if __name__ == "__main__":
    main()
