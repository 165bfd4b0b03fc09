"""Resumable training state: model, optimizer, scheduler, step and RNG, in safetensors + JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlalign.models.checkpoint import atomic_write_json, load_state_checked, load_tensors, save_tensors

STATE_WEIGHTS = "train_state.safetensors"
STATE_META = "train_state.json"


def save_training_state(folder: str | Path, trainable: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any, step: int, generator: torch.Generator | None = None,
                        extra: dict[str, Any] | None = None) -> None:
    """Write everything needed to resume at ``step``. The JSON is written last, so a crash in between
    leaves the previous, consistent pair (the JSON names the step its tensors belong to)."""
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
    save_tensors(folder / STATE_WEIGHTS, tensors, metadata={"step": str(step)})
    atomic_write_json(folder / STATE_META, {
        "step": step,
        "param_groups": opt_state["param_groups"],
        "optimizer_scalars": scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "extra": extra or {},
    })


def load_training_state(folder: str | Path, trainable: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any, generator: torch.Generator | None = None) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote; returns the JSON metadata (``step``, ``extra``)."""
    folder = Path(folder)
    meta = json.loads((folder / STATE_META).read_text())
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
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    if generator is not None and "rng.generator" in tensors:
        generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    return meta


def has_training_state(folder: str | Path) -> bool:
    """Whether ``folder`` holds a resumable state."""
    folder = Path(folder)
    return (folder / STATE_META).is_file() and (folder / STATE_WEIGHTS).is_file()
