"""``vlalign pretrain-vlm``: pretrain a MiniVLM (frozen MiniCLIP tower -> projector -> small Llama) on the mini world."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from vlalign.commands.common import (
    add_command, add_out_argument, check_config_fields, check_device, check_output, parse_seed,
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = add_command(sub, "pretrain-vlm", help="pretrain a mini generative VLM on mini-world questions and captions",
                         example="vlalign pretrain-vlm --config configs/pretrain_vlm.yaml --out runs/mini-vlm")
    parser.add_argument("--config", type=Path, required=True, help="YAML file (see configs/pretrain_vlm.yaml)")
    parser.add_argument("--tower", default=None, help="override the config's MiniCLIP tower ('mini' or a folder)")
    parser.add_argument("--device", default=None, help="override both stages' device (cpu, cuda)")
    parser.add_argument("--seed", type=parse_seed, default=None, help="override the config's seed (initial weights)")
    parser.add_argument("--overwrite", action="store_true", help="discard a previous run in --out and start over")
    add_out_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vlalign.config import load_config
    from vlalign.pipelines.pretrain_vlm import PretrainVLMConfig, pretrain_vlm
    from vlalign.reporting.tables import markdown_table

    check_device(args.device)
    check_output(args.out, [("--tower", args.tower)], nested_ok=("--tower",), kind="pretrain-vlm")
    config = load_config(args.config, PretrainVLMConfig)
    check_config_fields(config, args.config)
    overrides = {k: v for k, v in (("tower", args.tower), ("seed", args.seed)) if v is not None}
    config = dataclasses.replace(config, **overrides)
    if args.device is not None:
        config = config.with_device(args.device)
    for stage in ("projector", "full"):
        check_device(getattr(config, stage).device, f"{args.config}: {stage}.device")
    check_output(args.out, [(f"{args.config}: tower", config.tower)], nested_ok=(f"{args.config}: tower",),
                 kind="pretrain-vlm")
    metrics = pretrain_vlm(config, args.out, overwrite=args.overwrite)
    rows = [[kind, f"{value:.3f}"] for kind, value in metrics["exact_match"].items()]
    rows.append(["CIDEr-D (captions)", f"{metrics['cider']:.3f}"])
    if "robust" in metrics:
        robust = metrics["robust"]
        rows += [[f"{kind} under {robust['attack']} at {robust['eps']}", f"{value:.3f}"]
                 for kind, value in robust["accuracy"].items()]
    if metrics["seconds"].get("pretraining_total") is not None:
        rows.append(["pretraining seconds", f"{metrics['seconds']['pretraining_total']:.0f}"])
    print(markdown_table(["metric (fresh images)", "value"], rows))
    print(f"model written to {args.out}")
    return 0
