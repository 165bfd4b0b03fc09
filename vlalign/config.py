"""Experiment configs as dataclasses, loaded from YAML and validated on load.

Every config class is a plain dataclass whose fields carry type hints and, by the project's one convention, a
help text in the field's metadata (``option(default, "help")``), which ``vlalign config show`` prints. ``load_config`` walks the YAML
mapping, rejects unknown keys, converts and checks each value against its hint, and raises a
:class:`ConfigError` naming the file, the dotted field path, the value and what was expected. Each
dataclass may add semantic checks in ``__post_init__`` by raising ``ValueError``; those are re-raised as
``ConfigError`` with the file name attached.

A section given in part keeps its other fields at the run's default for that section (the field's default
instance), except the fields the section's class names in ``RESOLVED_IN_POST_INIT``: fields whose null default its
``__post_init__`` replaces by a value that depends on other fields (e.g. AdvLoRA's parts, on for ``trainable:
advlora``, off otherwise). Those start from their declared default again, so that the section's own fields decide
them.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, NewType, TypeVar, Union

import yaml

from vlalign.io import read_utf8

T = TypeVar("T")

#: A field kept as text that YAML may also give as a plain number (an ε such as ``4/255`` or ``0.0157``): a number
#: is accepted and stored as its shortest exact text, which the field's own parser reads back.
NumberText = NewType("NumberText", str)


class ConfigError(ValueError):
    """A config file or mapping does not match its dataclass."""


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a help text (``factory`` builds mutable defaults such as lists)."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"help": help})


def field_help(cls: type) -> list[tuple[str, str, Any, str]]:
    """``(name, type, default, help)`` of every init field of the dataclass ``cls`` (default ``None`` when the
    field is required; a nested dataclass's default is its class name)."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if dataclasses.is_dataclass(default):
            default = type(default).__name__
        rows.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return rows


def check_range(name: str, value: float, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raise ``ValueError("name must be in [low, high), got value")`` unless ``value`` is finite and inside the
    interval (``None`` = unbounded; ``*_open`` excludes the end)."""
    inside = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if inside and low is not None:
        inside = value > low if low_open else value >= low
    if inside and high is not None:
        inside = value < high if high_open else value <= high
    if not inside:
        left = "(" if low_open or low is None else "["
        right = ")" if high_open or high is None else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{name} must be a finite number in {left}{lo}, {hi}{right}, got {value!r}")


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(hint))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if hint is type(None):
        return "null"
    if hint is NumberText:
        return "number or str"
    return getattr(hint, "__name__", str(hint))


def _is_container_for(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the container shape ``hint`` expects (so an error would lie inside it)."""
    if dataclasses.is_dataclass(hint) or typing.get_origin(hint) is dict:
        return isinstance(value, dict)
    return typing.get_origin(hint) in (list, tuple) and isinstance(value, (list, tuple))


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Convert ``value`` to ``hint`` or raise ConfigError naming ``where``."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        errors = []
        for arg in args:
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors.append(exc)
        # A mapping or list that only one member can hold (Optional[Section], say) failed *inside* it: that
        # member's error names the nested field at fault, which "expected X or null" would hide.
        containers = [err for arg, err in zip(args, errors) if _is_container_for(value, arg)]
        if len(containers) == 1:
            raise containers[0]
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{where}: expected one of {list(allowed)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items ({_type_name(hint)}), got {len(value)}: {value!r}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        key_t, val_t = typing.get_args(hint) or (Any, Any)
        return {_convert(k, key_t, where): _convert(v, val_t, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {hint.__name__}, got {type(value).__name__}")
        return _from_mapping(hint, value, where)
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads "1e-3" as a string; accept numeric strings, reject anything else.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if hint is NumberText:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return NumberText(repr(value))
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a number or a string such as 4/255, got {type(value).__name__} "
                              f"{value!r}")
        return NumberText(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def _from_mapping(cls: type[T], data: dict, where: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)} for {cls.__name__}; "
            f"expected keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            value = data[name]
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            if dataclasses.is_dataclass(default) and isinstance(value, dict):
                # A section given in part keeps its other fields at this field's default (e.g. a run's own loop
                # defaults), not at the section class's; fields resolved in __post_init__ are resolved again.
                resolved = set(getattr(default, "RESOLVED_IN_POST_INIT", ()))
                kept = {g.name: getattr(default, g.name) for g in dataclasses.fields(default)
                        if g.init and g.name not in resolved}
                value = {**kept, **value}
            kwargs[name] = _convert(value, hints[name], f"{where}.{name}" if where else name)
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"missing required key(s) {', '.join(prefix + n for n in missing)} for {cls.__name__}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from exc


def config_from_dict(cls: type[T], data: dict | None, source: str = "<dict>") -> T:
    """Build and validate a config dataclass ``cls`` from a mapping; errors name ``source``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return _from_mapping(cls, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


class _DuplicateKeyError(yaml.YAMLError):
    """A mapping names the same key twice (PyYAML would silently keep the last value)."""

    def __init__(self, key: Any, line: int, first_line: int) -> None:
        super().__init__(f"duplicate key {key!r} at line {line} (first given at line {first_line})")
        self.key, self.line, self.first_line = key, line, first_line


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping.

    Without this, ``lr: 0.1`` followed further down by ``lr: 1.0`` trains with 1.0 and nobody notices.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *anchor" merges are meant to be overridden
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: construct_mapping itself reports it
            line = key_node.start_mark.line + 1
            if first is not None:
                raise _DuplicateKeyError(key, line, first)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """The parsed contents of a YAML file; a missing file, a syntax error or a key given twice in one mapping is
    a one-line ConfigError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = read_utf8(path, ConfigError)
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 -- a SafeLoader subclass
    except _DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc}; remove one of them") from None
    except yaml.YAMLError as exc:
        # PyYAML's own message spans several lines and names "<unicode string>"; keep the problem and position.
        mark = getattr(exc, "problem_mark", None)
        position = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise ConfigError(f"{path}: not valid YAML{position}: {problem}") from None


def load_config(path: str | Path, cls: type[T]) -> T:
    """Load a YAML file into the dataclass ``cls``, validating keys, types and values."""
    return config_from_dict(cls, read_yaml(path), str(path))


def config_to_dict(config: Any) -> dict:
    """The plain-data form of a config dataclass (for writing beside results)."""
    return dataclasses.asdict(config)
