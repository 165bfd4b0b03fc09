"""The ``vlalign`` command line: argument parsing and wiring only.

Each sub-command lives in a module of :mod:`vlalign.commands` exposing ``register(subparsers)``; adding a
command means adding one module and one entry to ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

COMMAND_MODULES = (
    "vlalign.commands.data",
    "vlalign.commands.pretrain",
    "vlalign.commands.evaluate",
    "vlalign.commands.demo",
    "vlalign.commands.train",
    "vlalign.commands.experiment",
    "vlalign.commands.robust_eval",
    "vlalign.commands.control",
    "vlalign.commands.pretrain_vlm",
    "vlalign.commands.transfer",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlalign", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--t -4:4:0.5`` -> ``--t=-4:4:0.5``: argparse would take a value starting with '-' for an option."""
    out: list[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and re.match(r"^-\d", token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vlalign`` console script."""
    from vlalign.errors import USER_ERRORS

    argv = _join_negative_values([str(a) for a in (sys.argv[1:] if argv is None else argv)])
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except USER_ERRORS as exc:
        print(f"vlalign {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
