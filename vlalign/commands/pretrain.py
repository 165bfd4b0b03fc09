"""``vlalign pretrain-mini``: pretrain MiniCLIP on the mini world (or the people world) through the one loop."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from vlalign.commands.common import add_out_argument


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("pretrain-mini", help="pretrain MiniCLIP with symmetric InfoNCE on the mini world",
                            description="Pretrain a MiniCLIP; re-running into the same --out resumes. "
                                        "Example: vlalign pretrain-mini --config configs/pretrain_mini.yaml --out runs/mini")
    parser.add_argument("--config", type=Path, required=True, help="YAML file (see configs/pretrain_mini.yaml)")
    parser.add_argument("--device", default=None, help="override the config's train.device (cpu, cuda)")
    parser.add_argument("--seed", type=int, default=None, help="override the config's seed")
    parser.add_argument("--overwrite", action="store_true", help="discard a previous run in --out and start over")
    add_out_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vlalign.config import load_config
    from vlalign.pipelines.pretrain import PretrainConfig, pretrain_mini_clip
    from vlalign.reporting.tables import markdown_table

    config = load_config(args.config, PretrainConfig)
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    if args.device is not None:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, device=args.device))
    metrics = pretrain_mini_clip(config, args.out, overwrite=args.overwrite)
    print(markdown_table(["metric", "value"], [[k, v] for k, v in metrics.items()]))
    print(f"checkpoint written to {args.out}")
    return 0
