"""What identifies a training run, and what it resolved: the identity a run folder's state is compared with on
resume (the method's config, the loop settings, a fingerprint of every stream's data) and the values a config's
nulls stood for (``resolved_config.json``)."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from typing import Any

from vlalign.data.datasets import dataset_fingerprint
from vlalign.training.method import Method
from vlalign.training.state import config_hash
from vlalign.training.train_config import RUN_ONLY_FIELDS, TrainConfig


def null_stands_for(section: object, name: str) -> Any:
    """What a null field ``name`` of a method's config ``section`` stands for, or None when nothing resolves it
    there: the config's ``effective_<name>`` property (β and λ of the preference objectives), or for
    ``attack_step_size`` the step the method's PGD takes (the config's ``step_size`` rule where it has one, else
    PGD's own 2.5·ε/steps)."""
    from vlalign.attacks.pgd import PGD
    from vlalign.attacks.threat_model import parse_eps

    if hasattr(type(section), f"effective_{name}"):
        return getattr(section, f"effective_{name}")
    if name == "attack_step_size" and hasattr(section, "eps") and hasattr(section, "attack_steps"):
        step = getattr(section, "step_size", None)
        return step if step is not None else PGD(parse_eps(section.eps), steps=section.attack_steps).step_size
    return None


def run_identity(method: Method, train: TrainConfig, run_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config a run is identified by: the caller's ``run_config`` (data, evaluation, ...), the method's own
    config, the resolved loop settings (without the run-only ones) and the size of every stream."""
    loop = {k: v for k, v in asdict(train).items() if k not in RUN_ONLY_FIELDS}
    method_config = getattr(method, "config", None)
    if method_config is not None and not isinstance(method_config, dict):
        method_config = asdict(method_config)
    identity = dict(run_config or {})
    identity["method"] = {"class": type(method).__name__, **(method_config or {})}
    identity["train"] = loop
    identity["streams"] = {name: dataset_fingerprint(stream.dataset) for name, stream in method.streams().items()}
    return identity


#: The file of a run folder that records the values its config's nulls resolved to (:func:`resolved_settings`).
RESOLVED_FILE = "resolved_config.json"


def resolved_settings(method: Method, train: TrainConfig) -> dict[str, Any]:
    """What a run trains with where its config may say null: ``train``, the loop settings after the method's
    defaults (lr, optimizer, betas, weight decay), and ``method``, the method's config with each null field filled
    in by :func:`null_stands_for`."""
    method_config = getattr(method, "config", None)
    values: dict[str, Any] = {}
    if dataclasses.is_dataclass(method_config):
        values = asdict(method_config)
    elif isinstance(method_config, dict):
        values = dict(method_config)
    for name, value in list(values.items()):
        if value is None and (resolved := null_stands_for(method_config, name)) is not None:
            values[name] = resolved
    loop = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(train).items()}
    return {"method": {"class": type(method).__name__, **values}, "train": loop}


def same_run(meta: dict, identity: dict) -> bool:
    """Whether a state belongs to the run ``identity`` describes, allowing for what states written by an earlier
    vlalign recorded differently: an ``eval`` section (the run pipelines stopped counting the evaluation settings as
    part of a run: they do not change training) and the datasets' content digests (not recorded before; such a
    state is compared without them)."""
    if meta.get("config_hash") == config_hash(identity):
        return True
    saved = meta.get("config")
    if not isinstance(saved, dict):
        return False
    current = dict(identity)
    if "eval" in saved and "eval" not in current:
        saved = {k: v for k, v in saved.items() if k != "eval"}
    if not _has_content_digest(saved.get("streams")):
        current["streams"] = _without_content_digest(current.get("streams"))
    return config_hash(saved) == config_hash(current)


def _has_content_digest(value: Any) -> bool:
    if isinstance(value, dict):
        return "content" in value or any(_has_content_digest(v) for v in value.values())
    return False


def _without_content_digest(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_content_digest(v) for k, v in value.items() if k != "content"}
    return value
