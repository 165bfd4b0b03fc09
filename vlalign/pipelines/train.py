"""Training methods by name: the ``method:`` key of a training config picks the trainer.

Each entry maps a method name to ``"module:ConfigClass:function"``. The config class is a dataclass with a
``method`` field; the function takes ``(config, out_dir)``, trains, writes its outputs into ``out_dir`` and
returns a metrics dict. Adding a method means adding one line here, no ``if`` chains elsewhere.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

from vlalign.config import ConfigError, config_from_dict, read_yaml

_PO = "vlalign.pipelines.preference:PreferenceTrainConfig:train_from_config"
_ROBUST = "vlalign.pipelines.robust:RobustFinetuneConfig:train_from_config"
TRAINERS: dict[str, str] = {
    # Preference optimization for contrastive models and its baselines (contrastive-PO paper).
    "dpo": _PO, "ipo": _PO, "kto": _PO, "cdpo": _PO, "hinge": _PO, "simpo": _PO, "ce": _PO,
    # Robust fine-tuning baselines (Schlarmann et al. 2024).
    "tecoa": _ROBUST, "fare": _ROBUST,
}


def register_trainer(name: str, target: str) -> None:
    """Register ``"module:ConfigClass:function"`` under ``name`` (the config's ``method``)."""
    if name in TRAINERS and TRAINERS[name] != target:
        raise ValueError(f"training method {name!r} is already registered as {TRAINERS[name]}")
    TRAINERS[name] = target


def resolve_trainer(name: str) -> tuple[type, Callable[[Any, Path], dict]]:
    """The (config class, train function) registered for ``name``."""
    if name not in TRAINERS:
        raise ConfigError(f"unknown training method {name!r}; expected one of {sorted(TRAINERS)}")
    module_name, class_name, function_name = TRAINERS[name].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name), getattr(module, function_name)


def load_training_config(path: str | Path) -> Any:
    """Read a training YAML, pick its trainer by ``method`` and validate it into that trainer's config."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("method"), str):
        raise ConfigError(f"{path}: expected a mapping with a string key 'method' (one of {sorted(TRAINERS)})")
    try:
        config_cls, _ = resolve_trainer(data["method"])
    except ConfigError as exc:
        raise ConfigError(f"{path}: field 'method': {exc}") from None
    return config_from_dict(config_cls, data, str(path))


def run_training(config: Any, out: str | Path) -> dict:
    """Train with the function registered for ``config.method``."""
    _, train = resolve_trainer(config.method)
    return train(config, Path(out))
