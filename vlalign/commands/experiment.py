"""``vlalign experiment NAME --out DIR``: the papers' experiments, end to end.

``EXPERIMENTS`` maps a name to ``"module:function"``; the function takes ``(out_dir, quick: bool, seed: int)``,
writes ``metrics.json`` and ``report.md`` into ``out_dir`` and returns the metrics.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

EXPERIMENTS: dict[str, str] = {
    "typographic": "vlalign.experiments.typographic:run_typographic_experiment",
    "attribute": "vlalign.experiments.attribute:run_attribute_experiment",
    "robust": "vlalign.experiments.robust:run_robust_experiment",
}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("experiment", help="run one of the papers' experiments end to end")
    parser.add_argument("name", help="experiment name (see the README)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {args.name!r}; expected one of {sorted(EXPERIMENTS)}")
    module_name, function_name = EXPERIMENTS[args.name].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    function(args.out, quick=args.quick, seed=args.seed)
    return 0
