"""One AdPO row of ``vlalign experiment adpo`` with some of its config fields changed, trained and evaluated in
``mini-vlm`` at the full experiment's settings (no transfer VLM), one torch thread: how the variants in the README's
AdPO section were measured.

Run: ``python -m benchmarks.adpo_variant ROW '{"field": value, ...}' OUT_DIR``, e.g.
``python -m benchmarks.adpo_variant adpo_dpo '{"attack_on": "policy", "attack_objective": "embedding"}' runs/v1``.
ROW may also be ``fare`` or ``tecoa`` (with ``'{}'``: their fields are not AdPO's). ``--eval '{"questions": 1000,
"attack_questions": 1000}'`` changes the evaluation's settings (the experiment's ``eval`` block), e.g. for a finer
measurement or other questions (``'{"seed": 4345}'``: the validation questions the learning rates were chosen on);
``--lr 1e-3`` trains at another peak learning rate than the experiment's for the row's family; ``--settings
'{"data": {"questions": 3840}}'`` changes any other setting of the experiment (``adpo.FULL``, nested blocks merge);
``--seed 1`` is the loop seed (batches, attack starts) that ``run_adpo_experiment(..., seed=1)`` would use.
``--check 4344`` (repeatable) also scores the row like the experiment's target check (1,000 fresh questions of that
seed, APGD-CE at 4/255 on every clean-correct one; 4344 is the check's own seed, 4345 the validation questions) and
writes the per-question scores (with the question seed and count) to ``OUT_DIR/check_<seed>.json``, which
``python -m benchmarks.adpo_compare`` pairs.
A row whose run in ``OUT_DIR`` finished is loaded, not trained again, so ``--check`` also re-scores a finished
experiment's rows (``OUT_DIR`` = its ``--out``).
Prints and writes ``OUT_DIR/variant.json``: clean exact match, APGD-CE accuracy at 2/255 and 4/255, targeted success
at 4/255, CIDEr-D, seconds per step, and each check's clean and 4/255 accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import json_object_argument
from vlalign.config import config_from_dict
from vlalign.experiments import adpo
from vlalign.io import atomic_write_json
from vlalign.training.methods.adpo import AdPOConfig
from vlalign.training.methods.robust import RobustConfig
from vlalign.training.train_config import TrainConfig


def check_settings(settings: dict, base: dict = adpo.FULL, path: str = "") -> None:
    """A ``ValueError`` naming the first setting of the merged ``settings`` whose type or range does not fit the
    experiment's (``base``): blocks stay JSON objects, counts and seeds whole numbers >= 0, rates and fractions
    finite numbers >= 0 (learning rates > 0), names strings (``transfer_vlm`` may be null)."""
    for key, expected in base.items():
        value, name = settings[key], f"{path}{key}"
        if isinstance(expected, dict):
            if not isinstance(value, dict):
                raise ValueError(f"{name}: expected a JSON object such as {json.dumps(expected)}, got {value!r}")
            check_settings(value, expected, f"{name}.")
        elif isinstance(expected, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{name}: expected true or false, got {value!r}")
        elif isinstance(expected, int):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected a whole number >= 0, got {value!r}")
        elif isinstance(expected, float):
            low = "> 0" if path == "lr." else ">= 0"
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                    or value < 0 or (path == "lr." and value == 0)):
                raise ValueError(f"{name}: expected a finite number {low}, got {value!r}")
        elif isinstance(expected, str) and not isinstance(value, str) and not (key == "transfer_vlm" and value is None):
            raise ValueError(f"{name}: expected a string such as {expected!r}, got {value!r}")


def check_row(row: str, settings: dict, seed: int, fields: dict[str, Any]) -> None:
    """Build the row's loop and method config as the experiment does (``adpo.train_adpo`` / ``train_robust_tower``),
    so that a bad setting or field is a ``ValueError`` naming it before anything is trained."""
    config_from_dict(TrainConfig, {**settings["train"], "lr": settings["lr"][adpo.family(row)], "seed": seed},
                     "settings.train")
    if row in ("tecoa", "fare"):
        try:
            RobustConfig(method=row, eps=settings["eps"], attack_steps=settings["attack_steps"])
        except ValueError as error:
            raise ValueError(f"settings (eps, attack_steps): {error}") from None
        return
    config = {"eps": settings["eps"], "attack_steps": settings["attack_steps"], "attack_on": settings["attack_on"],
              "attack_objective": settings["attack_objective"], "max_new_tokens": settings["max_new_tokens"],
              "attack_seed": seed, **adpo.ADPO_ROWS[row], **fields}
    if config.get("la_schedule", "constant") != "constant":
        config["schedule_steps"] = settings["train"]["steps"]
    config_from_dict(AdPOConfig, config, "fields")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("row", choices=sorted([*adpo.ADPO_ROWS, "fare", "tecoa"]))
    parser.add_argument("fields", help="JSON object of AdPOConfig fields to change, e.g. '{\"la_weight\": 4.0}'")
    parser.add_argument("out", type=Path)
    parser.add_argument("--eval", default="{}", help="JSON object of evaluation settings to change, e.g. "
                                                     "'{\"attack_questions\": 1000}'")
    parser.add_argument("--settings", default="{}", help="JSON object of other experiment settings to change, e.g. "
                                                         "'{\"data\": {\"questions\": 3840}}'")
    parser.add_argument("--seed", type=int, default=0, help="the loop seed (default 0, the experiment's)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the experiment's for the "
                                                                   "row's family)")
    parser.add_argument("--check", type=int, action="append", default=[], metavar="QUESTION_SEED",
                        help="also score the row on the target check's questions of this seed (repeatable)")
    args = parser.parse_args()
    fields = json_object_argument(parser, args.fields, "fields")
    if fields and args.row not in adpo.ADPO_ROWS:
        parser.error(f"{args.row} takes no AdPO fields; pass '{{}}'")
    evaluation = json_object_argument(parser, args.eval, "--eval")
    changed = json_object_argument(parser, args.settings, "--settings")
    if args.seed < 0:
        parser.error(f"--seed: expected a seed >= 0, got {args.seed}")
    bad_checks = [seed for seed in args.check if seed < 0]
    if bad_checks:
        parser.error(f"--check: expected question seeds >= 0, got {bad_checks}")
    try:
        settings = adpo.merged_settings(adpo.merged_settings(adpo.FULL, changed),
                                        {"transfer_vlm": None, "eval": evaluation})
        check_settings(settings)
    except ValueError as error:
        parser.error(f"--settings / --eval: {error}")
    if args.lr is not None:
        if not (math.isfinite(args.lr) and args.lr > 0):
            parser.error(f"--lr: expected a positive learning rate, got {args.lr}")
        settings["lr"][adpo.family(args.row)] = args.lr
    try:
        check_row(args.row, settings, args.seed, fields)
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    torch.set_num_threads(1)
    began = time.perf_counter()
    row = adpo.run_row(args.row, settings, args.seed, args.out, fields=fields)["methods"]
    result = {"row": args.row, "fields": fields, "eval": evaluation, "settings": changed, "seed": args.seed,
              "lr": settings["lr"][adpo.family(args.row)], "clean": row["clean"], "robust": row["robust"],
              "targeted_success": row["targeted_success"], "cider": row["cider"], "step_seconds": row["step_seconds"],
              "checks": {}, "seconds": None}
    for question_seed in args.check:
        check = adpo.confirm_row(args.row, adpo.merged_settings(settings, {"confirm": {"seed": question_seed}}),
                                 args.seed, args.out)
        # which questions were scored: adpo_compare pairs only checks of the same questions
        check = {**check, "question_seed": question_seed}
        atomic_write_json(args.out / f"check_{question_seed}.json", check)
        result["checks"][str(question_seed)] = {key: check[key] for key in ("clean", "robust", "n")}
    result["seconds"] = time.perf_counter() - began
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "variant.json", result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
