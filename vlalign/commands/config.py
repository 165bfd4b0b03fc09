"""``vlalign config show METHOD``: every field of a method's training config, with its default and help."""

from __future__ import annotations

import argparse
import dataclasses

from vlalign.commands.common import add_command


def register(sub: argparse._SubParsersAction) -> None:
    parser = add_command(sub, "config", "show the fields, defaults and help of a method's training config",
                         "vlalign config show dpo")
    parser.add_argument("action", choices=["show"], help="what to do")
    parser.add_argument("method", help="a training method, e.g. dpo, kto, tecoa, fare")
    parser.set_defaults(handler=run)


def describe(config: object, prefix: str = "") -> list[str]:
    """One line per field ``section.name: default  # help``, nested sections indented under their name."""
    from vlalign.config import field_help

    lines = []
    for name, type_name, _, help_text in field_help(type(config)):
        value = getattr(config, name)
        if dataclasses.is_dataclass(value):
            lines.append(f"{prefix}{name}:{'  # ' + help_text if help_text else ''}")
            lines += describe(value, prefix + "  ")
        else:
            shown = "null" if value is None else (list(value) if isinstance(value, tuple) else value)
            lines.append(f"{prefix}{name}: {shown}  # {type_name}; {help_text}".rstrip("; "))
    return lines


def run(args: argparse.Namespace) -> int:
    from vlalign.pipelines.train import default_config

    config = default_config(args.method)
    print(f"# vlalign train config for method {args.method!r}: every field with its default")
    print("\n".join(describe(config)))
    return 0
