"""``vlalign pretrain-mini``: pretrain MiniCLIP on the mini world."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from vlalign.commands.common import add_out_argument


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("pretrain-mini", help="pretrain MiniCLIP with symmetric InfoNCE on the mini world")
    parser.add_argument("--config", type=Path, required=True, help="YAML file (see configs/pretrain_mini.yaml)")
    parser.add_argument("--device", default=None, help="override the config's device (cpu, cuda)")
    parser.add_argument("--seed", type=int, default=None, help="override the config's seed")
    add_out_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vlalign.config import load_config
    from vlalign.reporting.tables import markdown_table
    from vlalign.pipelines.pretrain import pretrain_mini_clip
    from vlalign.training.pretrain import PretrainConfig

    config = load_config(args.config, PretrainConfig)
    overrides = {k: v for k, v in (("device", args.device), ("seed", args.seed)) if v is not None}
    config = dataclasses.replace(config, **overrides)
    metrics = pretrain_mini_clip(config, args.out)
    print(markdown_table(["metric", "value"], [[k, v] for k, v in metrics.items()]))
    print(f"checkpoint written to {args.out}")
    return 0
