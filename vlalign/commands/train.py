"""``vlalign train --config FILE --out DIR``: any registered training method, chosen by the config."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vlalign.commands.common import add_out_argument, check_config_fields, check_device, check_output, HelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    from vlalign.pipelines.train import TRAINERS

    parser = sub.add_parser(
        "train", help="train with a config file (its 'method' key picks the method)",
        formatter_class=HelpFormatter,
        description="Train with the method a YAML config names; re-running into the same --out resumes from its "
                    "last checkpoint (only with the same config), and a finished run is not trained again.",
        epilog=f"methods: {', '.join(sorted(TRAINERS))}\n"
               "every field of a method's config, with its default and help: vlalign config show METHOD\n\n"
               "example:\n  vlalign train --config configs/dpo_typographic.yaml --out runs/dpo")
    parser.add_argument("--config", type=Path, required=True, help="YAML config, e.g. configs/dpo_typographic.yaml")
    parser.add_argument("--overwrite", action="store_true", help="discard a previous run in --out and start over")
    add_out_argument(parser)
    parser.set_defaults(handler=run)


def _config_inputs(config: Any, source: Path) -> list[tuple[str, Any]]:
    """The folders and files a run config reads (its model and data: ``data.path``, a folder or a JSON/JSONL file,
    ``data.regularization`` and AdvLoRA's ``data.image_root``), as ``(name, value)`` for :func:`check_output`."""
    data = getattr(config, "data", None)
    return [(f"{source}: model", getattr(config, "model", None)),
            *((f"{source}: data.{key}", getattr(data, key, None)) for key in ("path", "regularization", "image_root"))]


def run(args: argparse.Namespace) -> int:
    from vlalign.pipelines.train import load_training_config, run_training

    from vlalign.training.distributed import rank

    check_output(args.out, kind="train")
    config = load_training_config(args.config)
    check_config_fields(config, args.config)
    check_device(getattr(getattr(config, "train", None), "device", None), f"{args.config}: train.device")
    check_output(args.out, _config_inputs(config, args.config), nested_ok=(f"{args.config}: model",), kind="train")
    outcome = run_training(config, args.out, overwrite=args.overwrite)
    if rank() != 0:  # under accelerate launch the main process reports
        return 0
    if outcome.already_finished:
        print(f"{args.out}: this run already finished; its results are in {args.out / 'metrics.json'} "
              "(use --overwrite to train it again)")
        return 0
    if outcome.reevaluated:
        print(f"{args.out}: this run had already finished; evaluated it again with the config's eval settings, "
              f"without training (results in {args.out / 'metrics.json'})", file=sys.stderr)
    print(json.dumps(outcome.metrics, indent=2))
    return 0
