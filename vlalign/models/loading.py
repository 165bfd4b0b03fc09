"""Resolve a model spec (``mini``, a folder, or a hub id) to a ContrastiveModel."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

from vlalign.config import ConfigError, config_from_dict
from vlalign.models.base import ContrastiveModel
from vlalign.models.checkpoint import CheckpointError, atomic_write_json, load_state_checked, load_tensors, save_tensors
from vlalign.models.mini_clip import MiniCLIP, MiniCLIPConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def embedded_mini_dir() -> Path:
    """Folder of the MiniCLIP checkpoint shipped inside the package."""
    return Path(str(resources.files("vlalign") / "assets" / "mini"))


def embedded_people_dir() -> Path:
    """Folder of the people-world MiniCLIP shipped inside the package (``mini-people``)."""
    return Path(str(resources.files("vlalign") / "assets" / "mini_people"))


def save_mini_clip(model: MiniCLIP, folder: str | Path) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``folder``, each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder / WEIGHTS_FILE, model.state_dict(), metadata={"architecture": "MiniCLIP"})
    atomic_write_json(folder / CONFIG_FILE, model.config.to_dict())


def load_mini_clip(folder: str | Path) -> MiniCLIP:
    """Load a MiniCLIP saved by :func:`save_mini_clip`; errors name the file at fault."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing; a MiniCLIP folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        data = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path}: not valid JSON ({exc})") from None
    if data.pop("architecture", None) != "MiniCLIP":
        raise CheckpointError(f"{config_path}: not a MiniCLIP config (no \"architecture\": \"MiniCLIP\")")
    try:
        config = config_from_dict(MiniCLIPConfig, data, str(config_path))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    model = MiniCLIP(config)
    load_state_checked(model, load_tensors(folder / WEIGHTS_FILE), folder / WEIGHTS_FILE)
    return model.eval()


def load_model(spec: str | Path, device: str | torch.device = "cpu") -> ContrastiveModel:
    """``mini`` (the embedded default), ``mini-people`` (the embedded people-world model), a MiniCLIP or
    transformers CLIP folder, or a hub id."""
    spec_str = str(spec)
    if spec_str == "mini":
        model: ContrastiveModel = load_mini_clip(embedded_mini_dir())
    elif spec_str == "mini-people":
        model = load_mini_clip(embedded_people_dir())
    elif Path(spec_str).is_dir() and not (Path(spec_str) / CONFIG_FILE).is_file() and (Path(spec_str) / "run.json").is_file():
        # A linear-head run of `vlalign train`: the head over the base model it names.
        from vlalign.training.contrastive_po import load_aligned_model

        model = load_aligned_model(spec_str, device)
    elif Path(spec_str).is_dir():
        config_path = Path(spec_str) / CONFIG_FILE
        if not config_path.is_file():
            raise CheckpointError(f"{config_path}: missing; expected a MiniCLIP or transformers CLIP folder")
        try:
            data = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{config_path}: not valid JSON ({exc})") from None
        if data.get("architecture") == "MiniCLIP":
            model = load_mini_clip(spec_str)
        elif data.get("model_type") == "clip":
            from vlalign.models.hf_clip import HFCLIP

            model = HFCLIP.from_pretrained(spec_str, local_files_only=True)
        else:
            raise CheckpointError(
                f"{config_path}: unknown model type; expected \"architecture\": \"MiniCLIP\" or \"model_type\": \"clip\""
            )
    elif Path(spec_str).exists():
        raise CheckpointError(f"{spec_str}: expected a model folder, got a file")
    elif spec_str.startswith((".", "/", "~")):
        raise CheckpointError(f"{spec_str}: model folder not found")
    else:
        from vlalign.models.hf_clip import HFCLIP

        model = HFCLIP.from_pretrained(spec_str)
    return model.to(device).eval()
