"""How much of a fine-tuning change a rank-r LoRA could hold, layer by layer
(:mod:`vlalign.models.adapters.rank_profile`): for each changed weight matrix of ``TUNED`` against ``BASE``, its
relative change ‖ΔW‖/‖W₀‖ and the share of ‖ΔW‖² in its top-r singular directions, with the rank-r LoRA's parameter
count beside it.

Run: ``python -m benchmarks.rank_profile BASE TUNED [--ranks 1,2,4,5,8,16] [--prefix visual.] [--out FILE]``, where
BASE and TUNED are anything ``load_model`` takes, e.g. ``python -m benchmarks.rank_profile mini-retrieval
runs/advlora/models/full_adversarial --prefix visual.`` (the image tower of ``vlalign experiment advlora``'s
adversarial full fine-tuning). Prints a table; ``--out`` also writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from vlalign.io import atomic_write_json
from vlalign.models.adapters.rank_profile import weight_change_profile
from vlalign.models.loading import load_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("base", help="the pre-trained model (a name, folder or hub id)")
    parser.add_argument("tuned", help="the fine-tuned model of the same architecture")
    parser.add_argument("--ranks", default="1,2,4,5,8,16", help="comma-separated ranks (default: %(default)s)")
    parser.add_argument("--prefix", default="", help="only parameters whose names start with this, e.g. visual.")
    parser.add_argument("--out", type=Path, help="also write the table as JSON here")
    args = parser.parse_args(argv)
    try:
        ranks = sorted({int(r) for r in args.ranks.split(",")})
    except ValueError:
        parser.error(f"--ranks must be comma-separated integers, got {args.ranks!r}")
    if not ranks or ranks[0] < 1:
        parser.error(f"--ranks must be integers >= 1, got {args.ranks!r}")
    base = load_model(args.base)
    names = [name for name, _ in base.named_parameters()]
    if not any(name.startswith(args.prefix) for name in names):
        tops = sorted({name.split(".")[0] + "." for name in names})
        parser.error(f"--prefix {args.prefix!r}: no parameter of {args.base} starts with it; its parameters start "
                     f"with {', '.join(tops)}")
    try:
        changes = weight_change_profile(base, load_model(args.tuned), ranks, args.prefix)
    except ValueError as error:
        parser.error(str(error))
    header = f"{'weight':34s} {'shape':>16s} {'|ΔW|/|W0|':>9s}  " + "  ".join(f"r={r:<2d} (LoRA)" for r in ranks)
    print(header)
    for change in changes:
        cells = "  ".join(f"{change.captured[r]:.2f} ({change.lora_params[r]:>5d})" for r in ranks)
        relative = "—" if change.relative_change is None else f"{change.relative_change:.3f}"
        print(f"{change.name:34s} {str(change.shape):>16s} {relative:>9s}  {cells}")
    if args.out:
        atomic_write_json(args.out, {"base": args.base, "tuned": args.tuned, "ranks": ranks,
                                     "layers": [asdict(change) for change in changes]})
        print(json.dumps({"written": str(args.out)}))


if __name__ == "__main__":
    main()
