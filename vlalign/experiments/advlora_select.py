"""The val selection of ``vlalign experiment advlora``'s learning rates (``vlalign experiment advlora-select``): one
row per learning-rate family trained at every rate of its grid and scored on the **val** split, never on the test
gallery. The chosen rates are the defaults of :class:`vlalign.experiments.advlora.AdvLoRAExperiment`; the measured
grid is in the README."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from vlalign.config import config_to_dict
from vlalign.experiments.advlora import SELECTION_ROWS, family, run_jobs, selection_metric, set_up_run
from vlalign.experiments.advlora_report import command_line, selection_report_markdown
from vlalign.io import atomic_write_json
from vlalign.reporting.run_report import run_info, write_report


def run_advlora_selection(out: str | Path, quick: bool = False, seed: int = 0, workers: int | None = None) -> dict:
    """Choose each family's learning rate on the **val** split: train one row of each family (:data:`SELECTION_ROWS`)
    at every rate of ``lr_grid`` and keep the one with the highest val mR of :func:`selection_metric` (clean mR for
    clean training, mR under PGD-10 for adversarial training; ties: the lower rate). Writes ``metrics.json`` and a
    report; the test gallery is never touched."""
    began = time.perf_counter()
    out, config, workers, sets = set_up_run(out, quick, seed, workers, ("train", "val"))
    # A family with a single rate has nothing to choose: it is not trained here.
    rows = [row for row in SELECTION_ROWS if len(config.lr_grid[family(row)]) > 1]
    jobs = [("select", row, None, lr) for row in rows for lr in config.lr_grid[family(row)]]
    results = run_jobs(jobs, {"config": config, "sets": sets, "out": out}, workers)
    grid: dict[str, dict[str, Any]] = {}
    for row in rows:
        runs = {f"{lr:g}": results[f"{row}_lr{lr:g}"] for lr in config.lr_grid[family(row)]}
        grid[family(row)] = {lr: {"clean": run["clean"], "pgd": run["pgd"], "seconds": run["train_seconds"]}
                             for lr, run in runs.items()}
    chosen = {family(row): min(grid[family(row)], key=lambda lr: (-grid[family(row)][lr][selection_metric(row)]["mR"],
                                                                   float(lr)))
              for row in rows}
    chosen.update({family(row): f"{config.lr_grid[family(row)][0]:g}" for row in SELECTION_ROWS if row not in rows})
    metrics = {"grid": grid, "chosen": {fam: float(lr) for fam, lr in chosen.items()},
               "criterion": {family(row): selection_metric(row) for row in SELECTION_ROWS},
               "settings": {"quick": quick, "seed": seed, "workers": workers, **config_to_dict(config),
                            "seconds": time.perf_counter() - began}}
    atomic_write_json(out / "metrics.json", metrics)
    write_report(out, "experiment-advlora-select", selection_report_markdown(metrics),
                 run_info(command=command_line("advlora-select", quick, seed), seconds=time.perf_counter() - began))
    print(selection_report_markdown(metrics))
    return metrics
