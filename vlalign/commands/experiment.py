"""``vlalign experiment NAME --out DIR``: the papers' experiments, end to end.

``EXPERIMENTS`` maps a name to ``"module:function"``; the function takes ``(out_dir, quick: bool, seed: int)``,
writes ``metrics.json`` and ``report.md`` into ``out_dir`` and returns the metrics. ``SUMMARIES`` gives each a
line for ``vlalign experiment --help``.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from vlalign.commands.common import add_command, check_output

EXPERIMENTS: dict[str, str] = {
    "typographic": "vlalign.experiments.typographic:run_typographic_experiment",
    "attribute": "vlalign.experiments.attribute:run_attribute_experiment",
    "robust": "vlalign.experiments.robust:run_robust_experiment",
}

SUMMARIES: dict[str, str] = {
    "typographic": "contrastive-PO Table 1: DPO/IPO/KTO vs CE, PAINT and other baselines against written words "
                   "(~20 min on 2 CPU cores)",
    "attribute": "flip and neutralize the body style in the people world with a linear head, Σ^t sweep and "
                 "retrieval parity (~1 min)",
    "robust": "TeCoA and FARE adversarial fine-tuning beside the pretrained MiniCLIP under APGD and PGD (~35 min)",
}


def register(sub: argparse._SubParsersAction) -> None:
    listing = "\n".join(f"  {name:<12} {SUMMARIES[name]}" for name in EXPERIMENTS)
    parser = add_command(sub, "experiment", "run one of the papers' experiments end to end",
                         ["vlalign experiment typographic --out runs/typographic",
                          "vlalign experiment attribute --quick --out runs/attribute_smoke"],
                         description=f"Run one of the papers' experiments end to end; each writes metrics.json, "
                                     f"report.md and its plots into --out.\n\nexperiments:\n{listing}")
    parser.add_argument("name", choices=list(EXPERIMENTS), metavar="NAME",
                        help=f"one of: {', '.join(EXPERIMENTS)} (listed above)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of the training")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {args.name!r}; expected one of {sorted(EXPERIMENTS)}")
    check_output(args.out)
    module_name, function_name = EXPERIMENTS[args.name].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    function(args.out, quick=args.quick, seed=args.seed)
    return 0
