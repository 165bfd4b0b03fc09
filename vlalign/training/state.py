"""Resumable training state: model, optimizer, scheduler, step and RNG, in one safetensors file.

The tensors and the JSON metadata (step, optimizer hyper-parameters, scheduler) are saved together in
``train_state.safetensors`` (the metadata in its header), so one atomic rename commits a whole state: a crash
leaves the previous state or the new one, never weights of one step with counters of another.
``train_state.json`` is a readable copy of the metadata; resumption does not read it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from vlalign.io import atomic_write_json, save_tensors
from vlalign.models.checkpoint import CheckpointError, load_state_checked, load_tensors

STATE_WEIGHTS = "train_state.safetensors"
STATE_META = "train_state.json"
_META_KEY = "vlalign.training_state"


def save_training_state(folder: str | Path, trainable: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any, step: int, generator: torch.Generator | None = None,
                        extra: dict[str, Any] | None = None, extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write everything needed to resume at ``step`` as one atomically replaced file (plus a readable JSON copy).
    ``extra_tensors`` (e.g. a weight average) are saved in the same file and returned by the loader."""
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
    if generator is not None:
        tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors.update({f"extra.{k}": v for k, v in (extra_tensors or {}).items()})
    meta = {
        "step": step,
        "param_groups": opt_state["param_groups"],
        "optimizer_scalars": scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "extra": extra or {},
    }
    save_tensors(folder / STATE_WEIGHTS, tensors, metadata={"step": str(step), _META_KEY: json.dumps(meta)})
    atomic_write_json(folder / STATE_META, meta)


def load_training_state(folder: str | Path, trainable: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any, generator: torch.Generator | None = None) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote; returns the JSON metadata (``step``, ``extra``) with the
    extra tensors under ``extra_tensors``."""
    folder = Path(folder)
    tensors = load_tensors(folder / STATE_WEIGHTS)
    with safe_open(str(folder / STATE_WEIGHTS), framework="pt") as handle:
        header = handle.metadata() or {}
    if _META_KEY not in header:
        raise CheckpointError(f"{folder / STATE_WEIGHTS}: no training-state metadata in the file; not a resumable state")
    meta = json.loads(header[_META_KEY])
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
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    if generator is not None and "rng.generator" in tensors:
        generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    meta["extra_tensors"] = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    return meta


def has_training_state(folder: str | Path) -> bool:
    """Whether ``folder`` holds a resumable state."""
    folder = Path(folder)
    return (folder / STATE_WEIGHTS).is_file()
