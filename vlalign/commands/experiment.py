"""``vlalign experiment NAME --out DIR``: the papers' experiments, end to end.

``EXPERIMENTS`` maps a name to ``"module:function"``; the function takes ``(out_dir, quick: bool, seed: int)``,
writes ``metrics.json`` and ``report.md`` into ``out_dir`` and returns the metrics. ``SUMMARIES`` gives each a
line for ``vlalign experiment --help``. ``MULTI_SEED`` names the experiments that also run over several seeds
(``--seeds 0,1,2``): the function takes ``(out_dir, seeds, quick)`` and writes one folder per seed plus the
aggregate.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from vlalign.commands.common import add_command, check_output, parse_seed, seed_problem

EXPERIMENTS: dict[str, str] = {
    "typographic": "vlalign.experiments.typographic:run_typographic_experiment",
    "attribute": "vlalign.experiments.attribute:run_attribute_experiment",
    "robust": "vlalign.experiments.robust:run_robust_experiment",
    "advlora": "vlalign.experiments.advlora:run_advlora_experiment",
    "advlora-select": "vlalign.experiments.advlora_select:run_advlora_selection",
    "adpo": "vlalign.experiments.adpo:run_adpo_experiment",
}
MULTI_SEED: dict[str, str] = {
    "attribute": "vlalign.experiments.attribute.seeds:run_attribute_seeds",
}


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``: non-negative integers, no repeats."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds: expected comma-separated integers such as 0,1,2, got {text!r}") from None
    if any(seed_problem(s) is not None for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: expected distinct integers in [0, 2**63 - 1], got {text!r}")
    return seeds

SUMMARIES: dict[str, str] = {
    "typographic": "contrastive-PO Table 1: DPO/IPO/KTO vs CE, PAINT and other baselines against written words "
                   "(~20 min on 2 CPU cores)",
    "attribute": "flip and neutralize the body style in the people world with a linear head, Σ^t sweep and "
                 "retrieval parity (~1 min)",
    "robust": "TeCoA and FARE adversarial fine-tuning beside the pretrained MiniCLIP under APGD and PGD (~35 min)",
    "advlora": "AdvLoRA vs full fine-tuning and LoRA, clean and adversarial, for retrieval: Recall@k clean, under "
               "PGD, FGSM and transfer, ablations, rank sweep, word + PGD (~25 min on 2 CPU cores)",
    "advlora-select": "choose the advlora experiment's learning rates on the val split (29 runs, 32 min on 2 CPU "
                      "cores)",
    "adpo": "AdPO (DPO/IPO/KTO/SimPO, scheduled and no λ) vs TeCoA and FARE on mini-vlm, transferred into "
            "mini-vlm-large, the target checked on 1,000 fresh questions (~40-60 min on 2 CPU cores)",
}


def register(sub: argparse._SubParsersAction) -> None:
    listing = "\n".join(f"  {name:<14} {SUMMARIES[name]}" for name in EXPERIMENTS)
    parser = add_command(sub, "experiment", "run one of the papers' experiments end to end",
                         ["vlalign experiment typographic --out runs/typographic",
                          "vlalign experiment attribute --quick --out runs/attribute_smoke"],
                         description=f"Run one of the papers' experiments end to end; each writes metrics.json, "
                                     f"report.md and its plots into --out.\n\nexperiments:\n{listing}")
    parser.add_argument("name", choices=list(EXPERIMENTS), metavar="NAME",
                        help=f"one of: {', '.join(EXPERIMENTS)} (listed above)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=parse_seed, default=0, help="seed of the data and of the training")
    seeds.add_argument("--seeds", default=None,
                       help="comma-separated seeds, e.g. 0,1,2: one run each plus the mean and spread "
                            f"({', '.join(MULTI_SEED)} only)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {args.name!r}; expected one of {sorted(EXPERIMENTS)}")
    kind = f"experiment-{args.name}" + ("-seeds" if args.seeds is not None else "")
    check_output(args.out, kind=kind)
    if args.seeds is not None:
        if args.name not in MULTI_SEED:
            raise ValueError(f"--seeds is supported by {sorted(MULTI_SEED)} only; use --seed for {args.name!r}")
        seeds = parse_seeds(args.seeds)
        _function(MULTI_SEED[args.name])(args.out, seeds=seeds, quick=args.quick)
        return 0
    _function(EXPERIMENTS[args.name])(args.out, quick=args.quick, seed=args.seed)
    return 0


def _function(spec: str):
    module_name, function_name = spec.split(":")
    return getattr(importlib.import_module(module_name), function_name)
