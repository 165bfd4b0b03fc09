"""``vlalign demo``: the main job on the embedded default model."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlalign.commands.common import add_command, check_output, parse_seed


def register(sub: argparse._SubParsersAction) -> None:
    parser = add_command(sub, "demo", "show the embedded MiniCLIP fooled by written words (and the fix)",
                         ["vlalign demo --out runs/demo", "vlalign demo --fix-steps 0 --out runs/demo_quick"])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    parser.add_argument("--n", type=int, default=600, help="test images per split")
    parser.add_argument("--seed", type=parse_seed, default=2024, help="seed of the test images and of the training")
    parser.add_argument("--fix-steps", type=int, default=200, help="DPO training steps for the fix (0 skips it)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from vlalign.experiments.demo import run_demo
    from vlalign.models.loading import load_model

    if args.n < 1:
        raise ValueError(f"--n must be >= 1 (test images per split), got {args.n}")
    if args.fix_steps < 0:
        raise ValueError(f"--fix-steps must be >= 0 (0 skips the fix), got {args.fix_steps}")
    check_output(args.out, kind="demo")
    torch.manual_seed(args.seed)
    run_demo(load_model("mini"), args.out, n=args.n, seed=args.seed, fix_steps=args.fix_steps)
    return 0
