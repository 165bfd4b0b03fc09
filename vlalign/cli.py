"""The ``vlalign`` command line: argument parsing and wiring only.

Each sub-command lives in a module of :mod:`vlalign.commands` exposing ``register(subparsers)``; adding a
command means adding one module and one entry to ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import warnings

COMMAND_MODULES = (
    "vlalign.commands.data",
    "vlalign.commands.pretrain",
    "vlalign.commands.evaluate",
    "vlalign.commands.probe",
    "vlalign.commands.demo",
    "vlalign.commands.train",
    "vlalign.commands.experiment",
    "vlalign.commands.robust_eval",
    "vlalign.commands.control",
    "vlalign.commands.config",
    "vlalign.commands.report",
    "vlalign.commands.pretrain_vlm",
    "vlalign.commands.transfer",
)


DESCRIPTION = """\
Make CLIP-style image-text models harder to fool: measure how written words and small pixel changes
mislead a model, then fix it with preference optimization (DPO, IPO, KTO) or adversarial fine-tuning.
Runs offline on the embedded MiniCLIP ('mini'); any transformers CLIP folder or cached hub id works too."""

EPILOG = """\
start here:
  vlalign demo --out runs/demo            the embedded model fooled by written words, then fixed (~4 min on a CPU)
  vlalign COMMAND --help                  options, defaults and an example for one command"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from vlalign import __version__

    parts = [f"vlalign {__version__}"]
    for package in ("torch", "transformers"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package} not installed")
    return ", ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlalign", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
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


def _warnings_as_lines(command: str):
    """A ``warnings.showwarning`` that prints vlalign's own warnings (unknown words, distorted images) as one
    ``vlalign COMMAND: warning: ...`` line, like its errors; other libraries' warnings keep Python's format."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 -- warnings' signature
        if category.__module__.startswith("vlalign."):
            print(f"vlalign {command}: warning: {message}", file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vlalign`` console script."""
    from vlalign.errors import USER_ERRORS

    argv = _join_negative_values([str(a) for a in (sys.argv[1:] if argv is None else argv)])
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _warnings_as_lines(args.command)
        try:
            code = int(args.handler(args) or 0)
        except USER_ERRORS as exc:
            print(f"vlalign {args.command}: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            print(f"vlalign {args.command}: {exc or 'interrupted'}", file=sys.stderr)
            return 130
    _leave_process_group()
    return code


def _leave_process_group() -> None:
    """Under ``accelerate launch``, every process leaves the process group together after a command succeeds (one
    that exits with gloo's threads alive can abort with SIGABRT); nothing to do in a single process."""
    if "torch.distributed" in sys.modules:
        from vlalign.training.distributed import shutdown

        shutdown()


if __name__ == "__main__":
    sys.exit(main())
