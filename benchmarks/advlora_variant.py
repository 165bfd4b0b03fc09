"""One row of ``vlalign experiment advlora`` with some experiment settings changed, trained at the full run's
settings otherwise and scored on the **val** split, one torch thread: how the README's AdvLoRA placement, rank and
step choices were measured. ``--gallery test`` scores on the experiment's test gallery instead, for the seed spread of
rows already chosen (never to choose anything); ``--seed`` seeds the loop and the adapters' init, as the
experiment's ``--seed`` does.

Run: ``python -m benchmarks.advlora_variant ROW '{"setting": value, ...}' OUT_DIR``, where the settings are fields of
:class:`vlalign.experiments.advlora.AdvLoRAExperiment` (``train`` and ``lr`` are merged field by field), e.g.
``python -m benchmarks.advlora_variant advlora '{"rank": 8, "train": {"steps": 300}}' runs/v1``.
Prints and writes ``OUT_DIR/variant.json``: trainable parameters, mR clean and under PGD-10 at the training ε,
AdvLoRA's final mean α, training seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.common import json_object_argument
from vlalign.config import config_from_dict, config_to_dict
from vlalign.experiments import advlora
from vlalign.io import atomic_write_json
from vlalign.models.loading import load_model


def variant_config(changes: dict, seed: int = 0) -> advlora.AdvLoRAExperiment:
    """The full experiment's settings (loop seeded by ``seed``) with ``changes`` applied (``train`` and ``lr`` merged
    field by field); a ``ValueError`` names a malformed setting. ``train.seed`` is refused: ``seed`` is the seed."""
    data = config_to_dict(advlora.experiment_config(seed=seed))
    changes = dict(changes)
    for block, example in (("train", '{"steps": 300}'), ("lr", '{"advlora": 1e-3}')):
        value = changes.pop(block, {})
        if not isinstance(value, dict):
            raise ValueError(f"settings.{block}: expected a JSON object of fields to change, e.g. {example}, "
                             f"got {value!r}")
        if block == "train" and "seed" in value:
            raise ValueError("settings.train.seed: the loop seed is --seed (recorded in variant.json); pass --seed "
                             "instead")
        data[block].update(value)
    data.update(changes)
    return config_from_dict(advlora.AdvLoRAExperiment, data, "advlora_variant settings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("row", choices=sorted(advlora.ROWS))
    parser.add_argument("settings", help="JSON object of AdvLoRAExperiment settings to change, e.g. '{\"rank\": 8}'")
    parser.add_argument("out", type=Path)
    parser.add_argument("--gallery", choices=("val", "test"), default="val",
                        help="where to score the row: the val split (choices) or the test gallery (seed spread)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the loop and of the adapters' init")
    args = parser.parse_args()
    changes = json_object_argument(parser, args.settings, "settings")
    row_fields = advlora.ROWS[args.row]
    unused = {"full": ("rank", "rank_pattern", "image_targets", "alignment_weight", "alpha_lr_scale"),
              "lora": ("full_parameters", "alignment_weight", "alpha_lr_scale"),
              "advlora": ("full_parameters",)}[row_fields["trainable"]]
    if set(changes) & set(unused):
        parser.error(f"settings {sorted(set(changes) & set(unused))} do not apply to the row {args.row!r} "
                     f"(trainable={row_fields['trainable']!r})")
    try:
        config = variant_config(changes, args.seed)
        advlora.check_row(args.row, config, load_model(config.model))
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    torch.set_num_threads(1)
    began = time.perf_counter()
    sets = advlora.build_sets(config, ("train", args.gallery))
    model, _, facts = advlora.train_row(args.row, config, load_model(config.model), sets["train"], args.out / "run",
                                        config.lr[advlora.family(args.row)])
    scores = advlora.evaluate_model(model, config, sets[args.gallery], ("clean", "pgd"))
    result = {"row": args.row, "settings": changes, "gallery": args.gallery, "seed": args.seed,
              "trainable_params": facts["trainable_params"], "clean_mR": scores["clean"]["mR"],
              "pgd_mR": scores["pgd"]["mR"],
              "alpha_mean": facts["alpha"]["alpha_mean"][-1] if facts["alpha"] else None,
              "train_seconds": facts["train_seconds"], "seconds": time.perf_counter() - began}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "variant.json", result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
