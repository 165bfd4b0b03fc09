"""One full-tower row of ``vlalign experiment typographic`` (a PO row or CE fine-tuning) with its settings, loop or
training data changed, trained as the experiment trains it and scored beside the pretrained model on the same draw,
one torch thread: how the README's DPO seed spread and its validation cells were measured.

Run: ``python -m benchmarks.typographic_variant METHOD '{"field": value, ...}' OUT_DIR [--seed S]
[--gallery val|test] [--train '{"lr": ..., "steps": ...}'] [--sizes '{"n_pref": ..., "n_reg": ...}']
[--box-pairs N [--box-scenes fresh|same]] [--quick]``, where METHOD is a PO row (dpo, ipo, kto) or ``ce``, the
cross-entropy fine-tuning baseline (the experiment's CE row), and the settings are
:class:`vlalign.training.methods.preference.PreferenceConfig` fields applied over the experiment's own
(``PO_SETTINGS``), e.g. ``python -m benchmarks.typographic_variant dpo '{"lam": 3}' runs/v1``, and ``--train`` takes
:class:`vlalign.training.train_config.TrainConfig` fields applied over the full-tower rows' loop
(:func:`vlalign.experiments.typographic.full_tower_loop`: 300 steps of batch 64 at lr 5e-4, BMA). ``--sizes``
changes how much training data the row gets: ``n_pref`` typographic images (one preference triplet per written
class name) and ``n_reg`` clean regularization images, 2,000 each in the experiment. ``--box-pairs N`` adds N
triplets that carry a signal about the box itself (:func:`box_preference_pairs`): in-domain images with meaningless
letters in the box (the non-reading control's renderer), preferring the object over the class the pretrained model
ranks highest among the other in-domain classes; their scenes are fresh (data seed 300 + S) or, with
``--box-scenes same``, the preference images' own scenes (seed 100 + S) with letters in place of the word.
``--seed S`` is the experiment's ``--seed``: preference data seed 100 + S, the loop's seed S. ``--gallery test``
scores on the experiment's test draw (seed 5000 + S; with the default settings it reproduces that row of
``vlalign experiment typographic --seed S``), for the seed spread of a setting already chosen; ``--gallery val``
(the default) scores on a draw of seed 4500 + S that the experiment never uses, to choose settings.
Prints and writes ``OUT_DIR/variant.json``: the row's resolved config, loop and sizes (``config``, ``loop``,
``sizes``) beside the changes asked for (``settings``, ``train_settings``, ``size_settings``), both models' metrics
(``evaluate_typographic``), the row's difference to the pretrained model per metric, and the share of the gap to
clean closed, in-domain and held-out.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from benchmarks.common import json_object_argument
from vlalign.config import config_from_dict, config_to_dict
from vlalign.data.mini_world import INDOMAIN_CLASSES, MiniWorld
from vlalign.data.preference import PreferenceSet, class_prompts
from vlalign.evaluation.typographic import evaluate_typographic
from vlalign.evaluation.zero_shot import zero_shot_evaluate
from vlalign.experiments.typographic import (PO_SETTINGS, TEST_DRAW_OFFSET, TypographicSizes, experiment_inputs,
                                             full_tower_loop)
from vlalign.experiments.typographic_report import PO_METHODS, gap_closed
from vlalign.io import atomic_write_json
from vlalign.models.base import ContrastiveModel
from vlalign.training.methods.preference import PreferenceConfig, train_preference
from vlalign.training.train_config import TrainConfig

#: Offsets of the evaluation draws from the experiment's seed: its test draw, and a validation draw it never uses.
GALLERY_SEEDS = {"test": TEST_DRAW_OFFSET, "val": 4500}
#: The rows this tool trains: the full-tower PO rows and the cross-entropy fine-tuning baseline.
METHODS = (*PO_METHODS, "ce")
#: The sizes ``--sizes`` may change: the training data (evaluation sizes stay the experiment's).
DATA_SIZES = ("n_pref", "n_reg")
#: Data seeds of the box triplets' scenes, offsets from the experiment's seed: fresh scenes, or the preference
#: images' own (``experiment_inputs`` draws those from 100 + seed).
BOX_SCENE_SEEDS = {"fresh": 300, "same": 100}


def box_preference_pairs(reference: ContrastiveModel, world: MiniWorld, n: int, seed: int,
                         prompts: tuple[str, ...]) -> PreferenceSet:
    """``n`` triplets about the occluding box: non-reading images of the in-domain classes (meaningless letters in
    the box, data seed ``seed``), each preferring its object's prompt over the prompt of the in-domain class that
    ``reference`` scores highest among the others (its hardest wrong answer, computed once, in fixed batches).
    Indices refer to ``prompts``, which must be the class prompts of the world's classes in order."""
    images = world.sample("nonreading", n, seed, classes=INDOMAIN_CLASSES, word_classes=INDOMAIN_CLASSES)
    expected = class_prompts(images.classnames)
    if tuple(prompts) != expected:
        raise ValueError(f"prompts must be the world's class prompts in order, {list(expected)}, got {list(prompts)}")
    logits = zero_shot_evaluate(reference, images).logits.clone()
    allowed = torch.zeros(len(images.classnames), dtype=torch.bool)
    allowed[[images.classnames.index(c) for c in INDOMAIN_CLASSES]] = True
    logits[:, ~allowed] = float("-inf")
    logits[torch.arange(n), images.labels] = float("-inf")
    return PreferenceSet(images.images, images.labels.clone(), logits.argmax(1), prompts)


def with_box_pairs(pref: PreferenceSet, box: PreferenceSet) -> PreferenceSet:
    """The preference triplets followed by the box triplets (the same prompt list)."""
    if pref.prompts != box.prompts:
        raise ValueError("the box triplets must index the same prompts as the preference triplets")
    return PreferenceSet(torch.cat([pref.images, box.images]), torch.cat([pref.chosen, box.chosen]),
                         torch.cat([pref.rejected, box.rejected]), pref.prompts)


def variant_config(method: str, changes: dict) -> PreferenceConfig:
    """The experiment's full-tower config of ``method`` with ``changes`` (PreferenceConfig fields) applied."""
    if {"method", "trainable"} & set(changes):
        raise ValueError("method and trainable are fixed by the row (a full-tower row); change the other fields")
    return PreferenceConfig(**{"method": method, "trainable": "full", **PO_SETTINGS.get(method, {}), **changes})


def variant_sizes(quick: bool, size_changes: dict) -> TypographicSizes:
    """The experiment's sizes (``--quick``'s if ``quick``) with ``size_changes`` (``n_pref``, ``n_reg``) applied."""
    unknown = sorted(set(size_changes) - set(DATA_SIZES))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; only the training data sizes {list(DATA_SIZES)} change here")
    for name, value in size_changes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer (a number of images), got {value!r}")
    return replace(TypographicSizes.quick() if quick else TypographicSizes(), **size_changes)


def variant_loop(sizes: TypographicSizes, seed: int, train_changes: dict, method: str = "dpo") -> TrainConfig:
    """The experiment's full-tower loop of ``method`` for ``seed`` with ``train_changes`` (TrainConfig fields)
    applied, validated as a config file's ``train:`` section is (types, choices, ranges). The CE row keeps no EMA
    alternate, as in the experiment."""
    if "seed" in train_changes:
        raise ValueError("seed is the experiment's --seed; pass --seed instead")
    loop = full_tower_loop(sizes, seed)
    if method == "ce":
        loop = replace(loop, extra_averaging=[])
    return config_from_dict(TrainConfig, {**config_to_dict(loop), **train_changes}, "--train")


def run_variant(method: str, changes: dict, out: Path, seed: int = 0, gallery: str = "val",
                quick: bool = False, train_changes: dict | None = None, size_changes: dict | None = None,
                box_pairs: int = 0, box_scenes: str = "fresh") -> dict:
    """Train the row (its loop changed by ``train_changes``, its data sizes by ``size_changes``, ``box_pairs``
    box triplets added), score it and the pretrained model on the ``gallery`` draw, write ``out/variant.json``."""
    config = variant_config(method, changes)
    if box_scenes not in BOX_SCENE_SEEDS:
        raise ValueError(f"box_scenes must be one of {sorted(BOX_SCENE_SEEDS)}, got {box_scenes!r}")
    train_changes, size_changes = train_changes or {}, size_changes or {}
    began = time.perf_counter()
    sizes, world, reference, pref, reg = experiment_inputs(seed, quick, variant_sizes(quick, size_changes))
    if box_pairs:
        box = box_preference_pairs(reference, world, box_pairs, BOX_SCENE_SEEDS[box_scenes] + seed, pref.prompts)
        pref = with_box_pairs(pref, box)
    loop = variant_loop(sizes, seed, train_changes, method)
    model = train_preference(reference, pref, reg, config, loop, progress=False).model
    draw = GALLERY_SEEDS[gallery] + seed
    row = evaluate_typographic(model, reference, sizes.n_eval, draw, world)
    pretrained = evaluate_typographic(reference, reference, sizes.n_eval, draw, world)
    # the resolved fields too: what "{}" means changes when the experiment's defaults do
    result = {"method": method, "settings": changes, "config": asdict(config), "train_settings": train_changes,
              "loop": config_to_dict(loop), "size_settings": size_changes, "sizes": asdict(sizes), "seed": seed,
              "box_pairs": box_pairs, "box_scenes": box_scenes if box_pairs else None, "n_triplets": len(pref),
              "gallery": gallery, "draw_seed": draw, "n_eval": sizes.n_eval, "row": row, "pretrained": pretrained,
              "difference": {k: row[k] - pretrained[k] for k in row},
              "gap_closed": gap_closed(row, pretrained), "gap_closed_heldout": gap_closed(row, pretrained, "_heldout"),
              "seconds": time.perf_counter() - began}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "variant.json", result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("method", choices=METHODS)
    parser.add_argument("settings", help="JSON object of PreferenceConfig fields to change, e.g. '{\"lam\": 3}'")
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0, help="the experiment's seed (data 100 + S, loop S)")
    parser.add_argument("--gallery", choices=sorted(GALLERY_SEEDS), default="val",
                        help="where to score: a validation draw (choices) or the experiment's test draw (seed spread)")
    parser.add_argument("--quick", action="store_true", help="the experiment's --quick sizes (a smoke run)")
    parser.add_argument("--train", default="{}",
                        help="JSON object of TrainConfig fields to change in the row's loop, e.g. '{\"lr\": 1e-3}'")
    parser.add_argument("--box-pairs", type=int, default=0, metavar="N",
                        help="add N triplets of meaningless letters in the box (object over the hardest other class)")
    parser.add_argument("--box-scenes", choices=sorted(BOX_SCENE_SEEDS), default="fresh",
                        help="the box triplets' scenes: fresh ones, or the preference images' own")
    parser.add_argument("--sizes", default="{}",
                        help="JSON object of training data sizes to change, e.g. '{\"n_pref\": 8000, \"n_reg\": 8000}'")
    args = parser.parse_args()
    changes = json_object_argument(parser, args.settings, "settings", '{"lam": 3}')
    train_changes = json_object_argument(parser, args.train, "--train", '{"lr": 1e-3}')
    size_changes = json_object_argument(parser, args.sizes, "--sizes", '{"n_pref": 8000}')
    try:
        variant_config(args.method, changes)
    except (TypeError, ValueError) as error:
        parser.error(f"settings: {error}")
    if args.box_pairs < 0:
        parser.error(f"--box-pairs: expected a number of triplets >= 0, got {args.box_pairs}")
    if args.box_scenes != "fresh" and not args.box_pairs:
        parser.error("--box-scenes chooses the scenes of --box-pairs triplets; give --box-pairs N too")
    try:
        sizes = variant_sizes(args.quick, size_changes)
    except ValueError as error:
        parser.error(f"--sizes: {error}")
    try:
        loop = variant_loop(sizes, args.seed, train_changes, args.method)
    except (TypeError, ValueError) as error:
        parser.error(f"--train: {error}")
    pref_name = "n_pref with --box-pairs" if args.box_pairs else "n_pref"
    for name, count in ((pref_name, sizes.n_pref + args.box_pairs), ("n_reg", sizes.n_reg)):
        if count < loop.batch_size:
            parser.error(f"--sizes: {name} gives {count} training examples, fewer than one batch of "
                         f"{loop.batch_size}; give more images or a smaller --train batch_size")
    torch.set_num_threads(1)
    result = run_variant(args.method, changes, args.out, args.seed, args.gallery, args.quick, train_changes,
                         size_changes, args.box_pairs, args.box_scenes)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
