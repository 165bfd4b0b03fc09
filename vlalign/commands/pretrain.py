"""``vlalign pretrain-mini``: pretrain MiniCLIP on the mini world (or the people world) through the one loop."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from vlalign.commands.common import (
    add_command, add_out_argument, check_config_fields, check_device, check_output, parse_seed,
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = add_command(sub, "pretrain-mini", "pretrain MiniCLIP with symmetric InfoNCE on the mini world",
                         "vlalign pretrain-mini --config configs/pretrain_mini.yaml --out runs/mini",
                         description="Pretrain a MiniCLIP; re-running into the same --out resumes.")
    parser.add_argument("--config", type=Path, required=True, help="YAML file (see configs/pretrain_mini.yaml)")
    parser.add_argument("--device", default=None, help="override the config's train.device (cpu, cuda)")
    parser.add_argument("--seed", type=parse_seed, default=None, help="override the config's seed")
    parser.add_argument("--overwrite", action="store_true", help="discard a previous run in --out and start over")
    add_out_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vlalign.config import load_config
    from vlalign.pipelines.pretrain import PretrainConfig, pretrain_mini_clip
    from vlalign.reporting.tables import markdown_table

    check_device(args.device)
    check_output(args.out, kind="pretrain")
    config = load_config(args.config, PretrainConfig)
    check_config_fields(config, args.config)
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    if args.device is not None:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, device=args.device))
    check_device(config.train.device, f"{args.config}: train.device")
    metrics = pretrain_mini_clip(config, args.out, overwrite=args.overwrite)
    print(markdown_table(["metric", "value"], [[k, v] for k, v in metrics.items()]))
    print(f"checkpoint written to {args.out}")
    return 0
