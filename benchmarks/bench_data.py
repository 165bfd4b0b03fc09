"""Mini-world generation speed: images per second for each split kind, a worker pool against one process.

``MiniWorld.sample`` only uses its process pool from 2000 images on, so smaller counts measure the single-process
path twice. Timings include the pool's start-up (spawned interpreters importing torch), which is what a caller
pays. Run: ``python -m benchmarks --only data``. The memory columns are the resident set of this (the parent)
process only: the worker processes' memory is not counted, so the worker pool's side looks smaller than it is
(each row's notes say so).
"""

from __future__ import annotations

from benchmarks.common import Row, Settings, interleaved
from vlalign.data.mini_world import MiniWorld, WorldConfig

SPLITS = ("pretrain", "clean", "typographic", "matching")
WORKERS = 2


def run(settings: Settings) -> list[Row]:
    """One row per split kind: images/s of a pool of :data:`WORKERS` processes vs one process."""
    n = settings.pick(2000, 32)
    world = MiniWorld(WorldConfig(image_size=64))
    world.sample("typographic", 16, seed=0)  # warm the font cache
    rows = []
    for split in SPLITS if not settings.quick else SPLITS[:1]:
        variants = {"1 process": lambda s=split: world.sample(s, n, seed=0, workers=1),
                    f"{WORKERS} workers": lambda s=split: world.sample(s, n, seed=0, workers=WORKERS)}
        timing = interleaved(variants, "1 process", max(1, settings.repeats // 2), warmup=0)
        ratios = sorted(1 / r for r in timing.ratios[f"{WORKERS} workers"])
        rows.append(Row("data", f"mini-world '{split}' split: {WORKERS} worker processes vs 1, {n} images",
                        f"{WORKERS} workers", "1 process", "mini world (64 px)", n, "1 per process", "cpu",
                        "images/s", n / timing.median(f"{WORKERS} workers"), n / timing.median("1 process"),
                        1 / timing.ratio(f"{WORKERS} workers"), (ratios[0], ratios[-1]), len(ratios),
                        peak_mib={k: timing.peak_mib[k] for k in variants},
                        growth_mib={k: timing.growth_mib[k] for k in variants},
                        extra={"memory": f"peak RSS of the parent process only; the {WORKERS} workers' is not "
                                         "counted"}))
    return rows
