"""``vlalign config show METHOD``: every field of a method's training config, with its default and help.

The output is a YAML config a user can edit and train with: a field whose null the method or the section resolves
(the loop's lr and optimizer, β and λ, AdvLoRA's parts) is printed as null, with the value null stands for in
this config after the comment.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from vlalign.commands.common import add_command


def register(sub: argparse._SubParsersAction) -> None:
    parser = add_command(sub, "config", "show the fields, defaults and help of a method's training config",
                         "vlalign config show dpo")
    parser.add_argument("action", choices=["show"], help="what to do")
    parser.add_argument("method", help="a training method, e.g. dpo, kto, tecoa, fare")
    parser.set_defaults(handler=run)


def yaml_value(value: Any) -> str:
    """A config value as YAML writes it: null, true/false, floats in their shortest form, lists in brackets."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(json.dumps(v) if isinstance(v, str) else yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def method_train_defaults(config: object) -> dict[str, Any]:
    """The loop settings (lr, optimizer, betas, weight decay) the method of the run config ``config`` fills into
    ``train`` fields left null; {} for a run config this command does not know."""
    from vlalign.training.methods.adpo import AdPO, AdPOConfig
    from vlalign.training.methods.advlora import AdvLoRAConfig, AdvLoRAMethod
    from vlalign.training.methods.preference import PreferenceConfig, preference_train_defaults
    from vlalign.training.methods.robust import RobustConfig, RobustFinetune

    options = getattr(config, "options", None)
    if isinstance(options, PreferenceConfig):
        return preference_train_defaults(options.trainable)
    methods = {RobustConfig: RobustFinetune, AdPOConfig: AdPO, AdvLoRAConfig: AdvLoRAMethod}
    method = methods.get(type(options))
    return dict(method.default_train) if method is not None else {}


def null_values(config: object) -> dict[str, dict[str, Any]]:
    """Per section of a run config (``train``, ``options``), the value each of its null fields stands for."""
    from vlalign.training.run_identity import null_stands_for
    from vlalign.training.train_config import METHOD_DEFAULTED, TrainConfig

    values: dict[str, dict[str, Any]] = {}
    train = getattr(config, "train", None)
    if isinstance(train, TrainConfig):
        resolved = train.resolved(method_train_defaults(config))
        values["train"] = {name: getattr(resolved, name) for name in METHOD_DEFAULTED if getattr(train, name) is None}
    options = getattr(config, "options", None)
    if dataclasses.is_dataclass(options):
        values["options"] = {}
        for f in dataclasses.fields(options):
            value = getattr(options, f.name)
            if f.name in getattr(options, "RESOLVED_IN_POST_INIT", ()):
                values["options"][f.name] = value  # filled in by __post_init__; the editable default is null
            elif value is None and (resolved_value := null_stands_for(options, f.name)) is not None:
                values["options"][f.name] = resolved_value
    return values


def describe(config: object, prefix: str = "", nulls: dict[str, dict[str, Any]] | None = None,
             section: str = "") -> list[str]:
    """One line per field ``section.name: default  # help``, nested sections indented under their name. A field of
    ``nulls[section]`` is shown as null (its declared default), followed by the value null stands for."""
    from vlalign.config import field_help

    if nulls is None:
        nulls = null_values(config) if not prefix else {}
    resolved = nulls.get(section, {})
    lines = []
    for name, type_name, _, help_text in field_help(type(config)):
        value = getattr(config, name)
        if dataclasses.is_dataclass(value):
            lines.append(f"{prefix}{name}:{'  # ' + help_text if help_text else ''}")
            lines += describe(value, prefix + "  ", nulls, name if not prefix else f"{section}.{name}")
            continue
        comment = f"{type_name}; {help_text}".rstrip("; ")
        if name in resolved:
            value = None
            shown = resolved[name]
            comment += f"; null here means {f'{shown:.6g}' if isinstance(shown, float) else yaml_value(shown)}"
        lines.append(f"{prefix}{name}: {yaml_value(value)}  # {comment}")
    return lines


def run(args: argparse.Namespace) -> int:
    from vlalign.pipelines.train import default_config

    config = default_config(args.method)
    print(f"# vlalign train config for method {args.method!r}: every field with its default (null: derived, the "
          "value it stands for after the comment)")
    print("\n".join(describe(config)))
    return 0
