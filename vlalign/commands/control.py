"""``vlalign control --run DIR --t -4:4:0.5``: sweep Σ^t of a linear-head run (eq. 16, Fig. 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlalign.commands.common import add_command, check_device, check_output, parse_seed


def register(sub: argparse._SubParsersAction) -> None:
    parser = add_command(sub, "control", "training-free control: sweep W_t = UΣ^tVᵀ of a linear-head run",
                         "vlalign control --run runs/head --t -4:4:0.5")
    parser.add_argument("--run", type=Path, required=True, help="output folder of a `vlalign train` run with trainable: head")
    parser.add_argument("--t", default="-4:4:0.5", help="START:STOP:STEP (inclusive) or a comma-separated list")
    parser.add_argument("--n", type=int, default=600, help="test images per split")
    parser.add_argument("--seed", type=parse_seed, default=5000, help="seed of the test images")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/control)")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vlalign.data.mini_world import MiniWorld
    from vlalign.evaluation.control import parse_range
    from vlalign.experiments.control import write_control_report
    from vlalign.models.heads import HeadedCLIP
    from vlalign.models.loading import load_model

    if args.n < 1:
        raise ValueError(f"--n must be >= 1 (test images per split), got {args.n}")
    out = args.out or args.run / "control"
    check_device(args.device)
    ts = parse_range(args.t, "--t")
    check_output(out, [("--run", args.run)], nested_ok=("--run",), kind="control")
    model = load_model(args.run, args.device)
    if not isinstance(model, HeadedCLIP):
        raise ValueError(f"{args.run}: not a linear-head run (trainable: head); Σ^t control needs the head W")
    write_control_report(model, MiniWorld(), ts, args.n, args.seed, out)
    return 0
