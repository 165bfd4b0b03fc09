"""Resumable training state: weights, optimizer, scheduler, weight averages, RNG, step and the run's config, in
one safetensors file.

The tensors and the JSON metadata are saved together in ``train_state.safetensors`` (the metadata in its header),
so one atomic rename commits a whole state: a crash leaves the previous state or the new one, never weights of one
step with counters of another. ``train_state.json`` is a readable copy of the metadata; resumption does not read
it. The metadata records the config the run was started with (readable, and as a hash), so a run is never resumed
with another config, and whether the run finished, so a finished run is not trained again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from vlalign.io import atomic_write_json, save_tensors
from vlalign.models.checkpoint import CheckpointError, load_state_checked, load_tensors
from vlalign.training.averaging import WeightAverager

STATE_WEIGHTS = "train_state.safetensors"
STATE_META = "train_state.json"
_META_KEY = "vlalign.training_state"


def config_hash(config: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"train.steps: 60 -> 30"`` for every field that differs between two configs (JSON-normalized)."""
    a = flatten(json.loads(json.dumps(saved, default=str)))
    b = flatten(json.loads(json.dumps(current, default=str)))
    return [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "(absent)") != b.get(k, "(absent)")]


def save_training_state(folder: str | Path, trainable: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                        step: int, config: dict[str, Any], finished: bool = False,
                        averagers: dict[str, WeightAverager] | None = None, extra: dict[str, Any] | None = None
                        ) -> None:
    """Write everything needed to resume at ``step`` as one atomically replaced file (plus a readable JSON copy);
    ``extra`` holds further JSON-able counters of the run (e.g. images skipped per stream), returned in the
    metadata."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in trainable.state_dict().items()}
    opt_state = optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for pid, slot in opt_state["state"].items():
        for name, value in slot.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{pid}.{name}"] = value
            else:
                scalars[f"{pid}.{name}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    averages = {}
    for kind, averager in (averagers or {}).items():
        tensors.update({f"avg.{kind}.{n}": v for n, v in averager.average.items()})
        averages[kind] = {"weight_sum": averager.weight_sum, "step": averager.step}
    meta = {
        "step": step,
        "finished": finished,
        "config_hash": config_hash(config),
        "config": config,
        "param_groups": opt_state["param_groups"],
        "optimizer_scalars": scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "averages": averages,
    }
    meta = {**(extra or {}), **meta}
    save_tensors(folder / STATE_WEIGHTS, tensors, metadata={"step": str(step), _META_KEY: json.dumps(meta, default=str)})
    atomic_write_json(folder / STATE_META, meta)


def read_state_meta(folder: str | Path) -> dict[str, Any] | None:
    """The metadata of the state in ``folder`` (``None`` when there is none), without loading its tensors."""
    path = Path(folder) / STATE_WEIGHTS
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable training state ({exc})") from None
    if _META_KEY not in header:
        raise CheckpointError(f"{path}: no training-state metadata in the file; not a resumable state")
    return json.loads(header[_META_KEY])


def load_training_state(folder: str | Path, trainable: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                        averagers: dict[str, WeightAverager] | None = None) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote; returns its metadata."""
    folder = Path(folder)
    meta = read_state_meta(folder)
    if meta is None:
        raise CheckpointError(f"{folder / STATE_WEIGHTS}: no training state")
    tensors = load_tensors(folder / STATE_WEIGHTS)
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    load_state_checked(trainable, model_state, folder / STATE_WEIGHTS)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for key, value in meta["optimizer_scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    saved_sizes = [len(group["params"]) for group in meta["param_groups"]]
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    if saved_sizes != sizes:
        raise CheckpointError(f"{folder / STATE_WEIGHTS}: the saved optimizer has parameter groups of {saved_sizes} "
                              f"tensors, this run's has {sizes}: the method's trainable parameters or their groups "
                              "changed since the state was written; resume with the code that wrote it, or train "
                              "into a new folder")
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    for kind, averager in (averagers or {}).items():
        saved = meta["averages"].get(kind)
        if saved is None:
            raise CheckpointError(f"{folder / STATE_WEIGHTS}: no '{kind}' weight average in the state")
        prefix = f"avg.{kind}."
        try:
            averager.load_state_dict({"average": {k[len(prefix):]: v for k, v in tensors.items()
                                                  if k.startswith(prefix)}, **saved})
        except KeyError as exc:
            raise CheckpointError(f"{folder / STATE_WEIGHTS}: the '{kind}' weight average does not fit this run: "
                                  f"{exc.args[0]} (written by another method or an older vlalign); resume with the "
                                  "code that wrote it, or train into a new folder") from None
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return meta


def has_training_state(folder: str | Path) -> bool:
    """Whether ``folder`` holds a resumable state."""
    return (Path(folder) / STATE_WEIGHTS).is_file()
