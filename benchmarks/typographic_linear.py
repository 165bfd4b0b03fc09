"""The linear rows of ``vlalign experiment typographic`` at one seed, alone: Materzynska+, the linear-head DPO and
the head's Σ^t sweep, trained and scored as the experiment does (one torch thread), for the seed spread of issue
13's linear targets (head DPO lifts typographic accuracy ≥ 15 points, the written-label rate is monotone over
t ∈ [−2, 3] with each step within 0.01, Materzynska+ gains ≥ 4 points).

Run: ``python -m benchmarks.typographic_linear OUT_DIR [--seed S] [--quick]``. ``--seed S`` is the experiment's
``--seed`` (preference data 100 + S, loop seed S, test draw 5000 + S); with it the rows reproduce that run's
``materzynska``, ``head_dpo`` and ``control``. Prints and writes ``OUT_DIR/linear.json``: the three models' metrics
(``evaluate_typographic``), both gains, the sweep, whether it is monotone on the target range, its largest step
against the trend there (``monotone_violation``) and its smallest step (how far the sweep is from a flat stretch).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vlalign.evaluation.control import monotone_violation
from vlalign.evaluation.typographic import evaluate_typographic
from vlalign.experiments.control import control_sweep
from vlalign.experiments.typographic import (TEST_DRAW_OFFSET, experiment_inputs, head_dpo_config, head_dpo_loop,
                                             head_loop)
from vlalign.experiments.typographic_report import MONOTONE_T_RANGE, monotone_on, values_on
from vlalign.io import atomic_write_json
from vlalign.training.methods.baselines import train_materzynska
from vlalign.training.methods.preference import train_preference


def run_linear_rows(out: Path, seed: int = 0, quick: bool = False) -> dict:
    """Train Materzynska+ and the linear-head DPO of seed ``seed``, score them and the pretrained model on the test
    draw, sweep the head's Σ^t, write ``out/linear.json``."""
    began = time.perf_counter()
    sizes, world, reference, pref, reg = experiment_inputs(seed, quick)
    draw = TEST_DRAW_OFFSET + seed
    evaluate = lambda model: evaluate_typographic(model, reference, sizes.n_eval, draw, world)  # noqa: E731
    materzynska = train_materzynska(reference, pref, reg, head_loop(sizes, seed))
    head = train_preference(reference, pref, reg, head_dpo_config(), head_dpo_loop(sizes, seed), progress=False).model
    rows = {"pretrained": evaluate(reference), "materzynska": evaluate(materzynska), "head_dpo": evaluate(head)}
    control = control_sweep(head, world, sizes.control_t, sizes.n_eval, draw)
    in_range = values_on(control)
    steps = [b - a for a, b in zip(in_range, in_range[1:])]
    gains = {f"{row}{suffix}": rows[row][f"typographic{suffix}"] - rows["pretrained"][f"typographic{suffix}"]
             for suffix in ("", "_heldout") for row in ("materzynska", "head_dpo")}
    result = {"seed": seed, "draw_seed": draw, "n_eval": sizes.n_eval, "rows": rows, "typographic_gain": gains,
              "control": control, "monotone_t_range": list(MONOTONE_T_RANGE),
              "monotone_on_target_range": monotone_on(control), "monotone_violation": monotone_violation(in_range),
              "smallest_step_on_target_range": min((abs(d) for d in steps), default=None),
              "seconds": time.perf_counter() - began}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "linear.json", result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0,
                        help="the experiment's seed (data 100 + S, loop S, test draw 5000 + S)")
    parser.add_argument("--quick", action="store_true", help="the experiment's --quick sizes (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = run_linear_rows(args.out, args.seed, args.quick)
    print(json.dumps({k: result[k] for k in ("seed", "typographic_gain", "monotone_on_target_range",
                                              "monotone_violation", "seconds")}, indent=1))


if __name__ == "__main__":
    main()
