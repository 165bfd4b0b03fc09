"""``vlalign train``: the ``method:`` key of a training config picks the run (its config and its pipeline).

Each entry maps a method name to ``"module:RunConfig:function"``. The run config is a dataclass with sections
(``options`` of the method, ``train`` loop settings, ``data``, ``eval``); the function takes
``(config, out, progress, overwrite)``, trains through the one loop, writes its outputs into ``out`` and returns a
:class:`~vlalign.pipelines.runs.RunOutcome`. Adding a method means adding one line here.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

from vlalign.config import ConfigError, config_from_dict, read_yaml
from vlalign.pipelines.runs import RunOutcome

_PO = "vlalign.pipelines.preference:PreferenceRun:train_preference_run"
_ROBUST = "vlalign.pipelines.robust:RobustRun:train_robust_run"
TRAINERS: dict[str, str] = {
    # Preference optimization for contrastive models and its cross-entropy baseline (contrastive-PO paper).
    "dpo": _PO, "ipo": _PO, "kto": _PO, "cdpo": _PO, "hinge": _PO, "simpo": _PO, "ce": _PO,
    # Robust fine-tuning baselines (Schlarmann et al. 2024).
    "tecoa": _ROBUST, "fare": _ROBUST,
    # Adversarial robustness of a generative VLM's vision encoder by preference optimization (AdPO).
    "adpo": "vlalign.pipelines.adpo:AdPORun:train_adpo_run",
    # Adversarially robust low-rank adaptation for image-text retrieval (AdvLoRA; also plain LoRA, full fine-tuning).
    "advlora": "vlalign.pipelines.advlora:AdvLoRARun:train_advlora_run",
}


def register_trainer(name: str, target: str) -> None:
    """Register ``"module:RunConfig:function"`` under ``name`` (the config's ``method``)."""
    if name in TRAINERS and TRAINERS[name] != target:
        raise ValueError(f"training method {name!r} is already registered as {TRAINERS[name]}")
    TRAINERS[name] = target


def resolve_trainer(name: str) -> tuple[type, Callable[..., RunOutcome]]:
    """The (run config class, run function) registered for ``name``."""
    if name not in TRAINERS:
        raise ConfigError(f"unknown training method {name!r}; expected one of {sorted(TRAINERS)}")
    module_name, class_name, function_name = TRAINERS[name].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name), getattr(module, function_name)


def load_training_config(path: str | Path) -> Any:
    """Read a training YAML, pick its run by ``method`` and validate it into that run's config."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("method"), str):
        raise ConfigError(f"{path}: expected a mapping with a string key 'method' (one of {sorted(TRAINERS)})")
    try:
        config_cls, _ = resolve_trainer(data["method"])
    except ConfigError as exc:
        raise ConfigError(f"{path}: field 'method': {exc}") from None
    return config_from_dict(config_cls, data, str(path))


def default_config(method: str) -> Any:
    """The run config of ``method`` with every default (for ``vlalign config show``)."""
    config_cls, _ = resolve_trainer(method)
    return config_cls(method=method)


def run_training(config: Any, out: str | Path, progress: bool = True, overwrite: bool = False) -> RunOutcome:
    """Run the pipeline registered for ``config.method``."""
    _, run = resolve_trainer(config.method)
    return run(config, Path(out), progress=progress, overwrite=overwrite)
