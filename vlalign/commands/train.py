"""``vlalign train --config FILE --out DIR``: any registered training method, chosen by the config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vlalign.commands.common import add_out_argument


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train with a config file (its 'method' key picks the method)")
    parser.add_argument("--config", type=Path, required=True, help="YAML config, e.g. configs/dpo_typographic.yaml")
    add_out_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vlalign.pipelines.train import load_training_config, run_training

    config = load_training_config(args.config)
    metrics = run_training(config, args.out)
    print(json.dumps(metrics, indent=2))
    return 0
