"""One preference-optimization row of ``vlalign experiment typographic`` (full image tower) with its objective's
settings changed, trained as the experiment trains it and scored beside the pretrained model on the same draw, one
torch thread: how the README's DPO seed spread and its validation cells were measured.

Run: ``python -m benchmarks.typographic_variant METHOD '{"field": value, ...}' OUT_DIR [--seed S] [--gallery G]
[--train '{"lr": ..., "steps": ...}']``, where the settings are
:class:`vlalign.training.methods.preference.PreferenceConfig` fields applied over the experiment's own
(``PO_SETTINGS``), e.g. ``python -m benchmarks.typographic_variant dpo '{"lam": 3}' runs/v1``, and ``--train`` takes
:class:`vlalign.training.train_config.TrainConfig` fields applied over the full-tower rows' loop
(:func:`vlalign.experiments.typographic.full_tower_loop`: 300 steps of batch 64 at lr 5e-4, BMA).
``--seed S`` is the experiment's ``--seed``: preference data seed 100 + S, the loop's seed S. ``--gallery test``
scores on the experiment's test draw (seed 5000 + S; with the default settings it reproduces that row of
``vlalign experiment typographic --seed S``), for the seed spread of a setting already chosen; ``--gallery val``
(the default) scores on a draw of seed 4500 + S that the experiment never uses, to choose settings.
Prints and writes ``OUT_DIR/variant.json``: the row's resolved config and loop (``config``, ``loop``) beside the
changes asked for (``settings``, ``train_settings``), both models' metrics (``evaluate_typographic``), the row's
difference to the pretrained model per metric, and the share of the gap to clean closed, in-domain and held-out.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks.common import json_object_argument
from vlalign.config import config_from_dict, config_to_dict
from vlalign.evaluation.typographic import evaluate_typographic
from vlalign.experiments.typographic import (PO_SETTINGS, TEST_DRAW_OFFSET, TypographicSizes, experiment_inputs,
                                             full_tower_loop)
from vlalign.experiments.typographic_report import PO_METHODS, gap_closed
from vlalign.io import atomic_write_json
from vlalign.training.methods.preference import PreferenceConfig, train_preference
from vlalign.training.train_config import TrainConfig

#: Offsets of the evaluation draws from the experiment's seed: its test draw, and a validation draw it never uses.
GALLERY_SEEDS = {"test": TEST_DRAW_OFFSET, "val": 4500}


def variant_config(method: str, changes: dict) -> PreferenceConfig:
    """The experiment's full-tower config of ``method`` with ``changes`` (PreferenceConfig fields) applied."""
    if {"method", "trainable"} & set(changes):
        raise ValueError("method and trainable are fixed by the row (a full-tower PO row); change the other fields")
    return PreferenceConfig(**{"method": method, "trainable": "full", **PO_SETTINGS[method], **changes})


def variant_loop(sizes: TypographicSizes, seed: int, train_changes: dict) -> TrainConfig:
    """The experiment's full-tower loop for ``seed`` with ``train_changes`` (TrainConfig fields) applied, validated
    as a config file's ``train:`` section is (types, choices, ranges)."""
    if "seed" in train_changes:
        raise ValueError("seed is the experiment's --seed; pass --seed instead")
    return config_from_dict(TrainConfig, {**config_to_dict(full_tower_loop(sizes, seed)), **train_changes}, "--train")


def run_variant(method: str, changes: dict, out: Path, seed: int = 0, gallery: str = "val",
                quick: bool = False, train_changes: dict | None = None) -> dict:
    """Train the row (its loop changed by ``train_changes``), score it and the pretrained model on the ``gallery``
    draw, write ``out/variant.json``."""
    config = variant_config(method, changes)
    train_changes = train_changes or {}
    began = time.perf_counter()
    sizes, world, reference, pref, reg = experiment_inputs(seed, quick)
    loop = variant_loop(sizes, seed, train_changes)
    model = train_preference(reference, pref, reg, config, loop, progress=False).model
    draw = GALLERY_SEEDS[gallery] + seed
    row = evaluate_typographic(model, reference, sizes.n_eval, draw, world)
    pretrained = evaluate_typographic(reference, reference, sizes.n_eval, draw, world)
    # the resolved fields too: what "{}" means changes when the experiment's defaults do
    result = {"method": method, "settings": changes, "config": asdict(config), "train_settings": train_changes,
              "loop": config_to_dict(loop), "seed": seed, "gallery": gallery, "draw_seed": draw,
              "n_eval": sizes.n_eval, "row": row, "pretrained": pretrained,
              "difference": {k: row[k] - pretrained[k] for k in row},
              "gap_closed": gap_closed(row, pretrained), "gap_closed_heldout": gap_closed(row, pretrained, "_heldout"),
              "seconds": time.perf_counter() - began}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "variant.json", result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("method", choices=PO_METHODS)
    parser.add_argument("settings", help="JSON object of PreferenceConfig fields to change, e.g. '{\"lam\": 3}'")
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0, help="the experiment's seed (data 100 + S, loop S)")
    parser.add_argument("--gallery", choices=sorted(GALLERY_SEEDS), default="val",
                        help="where to score: a validation draw (choices) or the experiment's test draw (seed spread)")
    parser.add_argument("--quick", action="store_true", help="the experiment's --quick sizes (a smoke run)")
    parser.add_argument("--train", default="{}",
                        help="JSON object of TrainConfig fields to change in the row's loop, e.g. '{\"lr\": 1e-3}'")
    args = parser.parse_args()
    changes = json_object_argument(parser, args.settings, "settings", '{"lam": 3}')
    train_changes = json_object_argument(parser, args.train, "--train", '{"lr": 1e-3}')
    try:
        variant_config(args.method, changes)
    except (TypeError, ValueError) as error:
        parser.error(f"settings: {error}")
    try:
        variant_loop(TypographicSizes.quick() if args.quick else TypographicSizes(), args.seed, train_changes)
    except (TypeError, ValueError) as error:
        parser.error(f"--train: {error}")
    torch.set_num_threads(1)
    result = run_variant(args.method, changes, args.out, args.seed, args.gallery, args.quick, train_changes)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
