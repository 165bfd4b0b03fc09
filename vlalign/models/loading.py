"""Resolve a model spec (``mini``, a folder, or a hub id) to a ContrastiveModel."""

from __future__ import annotations

import difflib
import os
from importlib import resources
from pathlib import Path

import torch

from vlalign.config import ConfigError, config_from_dict
from vlalign.models.base import ContrastiveModel
from vlalign.models.checkpoint import CheckpointError, load_state_checked, load_tensors
from vlalign.io import atomic_write_json, read_json, save_tensors
from vlalign.models.mini_clip import MiniCLIP, MiniCLIPConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def embedded_mini_dir() -> Path:
    """Folder of the MiniCLIP checkpoint shipped inside the package."""
    return Path(str(resources.files("vlalign") / "assets" / "mini"))


def embedded_mini_v1_dir() -> Path:
    """Folder of the first shipped MiniCLIP (``mini-v1``): the image tower the shipped mini VLMs were pretrained on."""
    return Path(str(resources.files("vlalign") / "assets" / "mini_v1"))


def embedded_people_dir() -> Path:
    """Folder of the people-world MiniCLIP shipped inside the package (``mini-people``)."""
    return Path(str(resources.files("vlalign") / "assets" / "mini_people"))


def embedded_retrieval_dir() -> Path:
    """Folder of the retrieval-world MiniCLIP shipped inside the package (``mini-retrieval``)."""
    return Path(str(resources.files("vlalign") / "assets" / "mini_retrieval"))


#: Names of the MiniCLIPs shipped inside the package -> their folder.
EMBEDDED_MODELS = {"mini": embedded_mini_dir, "mini-v1": embedded_mini_v1_dir, "mini-people": embedded_people_dir,
                   "mini-retrieval": embedded_retrieval_dir}


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
    data = read_json(config_path, CheckpointError, f"a MiniCLIP folder holds {CONFIG_FILE} and {WEIGHTS_FILE}", dict)
    if data.pop("architecture", None) != "MiniCLIP":
        raise CheckpointError(f"{config_path}: not a MiniCLIP config (no \"architecture\": \"MiniCLIP\")")
    try:
        config = config_from_dict(MiniCLIPConfig, data, str(config_path))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    model = MiniCLIP(config)
    load_state_checked(model, load_tensors(folder / WEIGHTS_FILE), folder / WEIGHTS_FILE)
    return model.eval()


RUN_FILE = "run.json"
HEAD_FILE = "head.safetensors"


def save_model(model: ContrastiveModel, folder: str | Path, base_spec: str | None = None,
               info: dict | None = None) -> None:
    """Write ``model`` into ``folder`` so that :func:`load_model` loads it back, plus ``run.json`` (``info``).

    A MiniCLIP or transformers CLIP becomes a plain model folder. A :class:`HeadedCLIP` stores only its head
    (``head.safetensors``) and names its base model (``base_spec``) in ``run.json``, rather than copying it.
    """
    from vlalign.models.heads import HeadedCLIP

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info = dict(info or {})
    if isinstance(model, HeadedCLIP):
        if base_spec is None:
            raise ValueError("saving a linear-head model needs base_spec, the spec of the model under the head")
        save_tensors(folder / HEAD_FILE, {"weight": model.head.weight})
        info.update(trainable="head", base_model=str(base_spec))
    elif isinstance(model, MiniCLIP):
        save_mini_clip(model, folder)
    elif hasattr(model, "save_pretrained"):
        model.save_pretrained(folder)
    else:
        raise TypeError(f"do not know how to save a {type(model).__name__}")
    atomic_write_json(folder / RUN_FILE, info)


def _load_head_run(folder: Path, device: str | torch.device) -> ContrastiveModel:
    """A linear head over the base model its ``run.json`` names."""
    from vlalign.models.heads import HeadedCLIP, LinearHead

    info = _read_json(folder / RUN_FILE)
    if "base_model" not in info:
        raise CheckpointError(f"{folder / RUN_FILE}: a head run must name its \"base_model\"")
    base = load_model(info["base_model"], device)
    tensors = load_tensors(folder / HEAD_FILE)
    if set(tensors) != {"weight"} or not tensors["weight"].is_floating_point():
        raise CheckpointError(f"{folder / HEAD_FILE}: expected one floating-point tensor \"weight\" (the head W), got "
                              f"{ {k: str(v.dtype) for k, v in tensors.items()} }")
    # In the base model's dtype: a head saved in half precision would not multiply float32 embeddings.
    weight = tensors["weight"].to(next(base.parameters()).dtype)
    if weight.shape != (base.embed_dim, base.embed_dim):
        raise CheckpointError(f"{folder / HEAD_FILE}: head is {tuple(weight.shape)} but the base model "
                              f"{info['base_model']!r} has embedding width {base.embed_dim}")
    return HeadedCLIP(base, LinearHead(base.embed_dim, weight).to(device)).eval()


def _read_json(path: Path) -> dict:
    return read_json(path, CheckpointError, expect=dict)


def load_model(spec: str | Path, device: str | torch.device = "cpu") -> ContrastiveModel:
    """``mini`` (the embedded default), ``mini-people`` (the embedded people-world model), ``mini-retrieval``
    (the embedded retrieval-world model), a MiniCLIP folder, a transformers CLIP or BLIP-retrieval folder, or a
    hub id (dispatched on its config's ``model_type``)."""
    from vlalign.models.vlm_loading import EMBEDDED_VLMS

    spec_str = str(spec)
    if spec_str in EMBEDDED_VLMS and not Path(spec_str).exists():
        raise CheckpointError(f"{spec_str} is an embedded generative VLM; this needs a contrastive (CLIP-style) model: "
                              f"{', '.join(EMBEDDED_MODELS)}, a model folder or a cached hub id")
    if spec_str in EMBEDDED_MODELS:
        model: ContrastiveModel = load_mini_clip(EMBEDDED_MODELS[spec_str]())
    elif Path(spec_str).is_dir() and (Path(spec_str) / HEAD_FILE).is_file():
        model = _load_head_run(Path(spec_str), device)
    elif Path(spec_str).is_dir():
        config_path = Path(spec_str) / CONFIG_FILE
        if not config_path.is_file():
            raise CheckpointError(f"{config_path}: missing; expected a MiniCLIP or transformers CLIP folder")
        data = _read_json(config_path)
        if data.get("architecture") == "MiniCLIP":
            model = load_mini_clip(spec_str)
        elif data.get("model_type") in TRANSFORMERS_BACKENDS:
            model = _load_transformers(spec_str, data["model_type"], local_files_only=True)
        else:
            raise CheckpointError(
                f"{config_path}: unknown model type {data.get('model_type')!r}; expected \"architecture\": \"MiniCLIP\" "
                f"or \"model_type\" one of {sorted(TRANSFORMERS_BACKENDS)}"
            )
    elif Path(spec_str).exists():
        raise CheckpointError(f"{spec_str}: expected a model folder, got a file")
    elif spec_str.startswith((".", "/", "~")):
        raise CheckpointError(f"{spec_str}: model folder not found{did_you_mean(spec_str)}")
    else:
        model = _load_hub_model(spec_str)
    return model.to(device).eval()


def hub_downloads_allowed() -> bool:
    """Whether a hub id missing from the local cache may be downloaded: only when the user said so with
    ``HF_HUB_OFFLINE=0``. Otherwise a mistyped local path (``runs/tiny_dpoo`` is a valid hub id too) would be
    sent to the hub and retried for a minute before failing with a network error."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("0", "false", "no", "off")


def did_you_mean(spec: str) -> str:
    """``" (did you mean runs/tiny_dpo?)"`` when the folder part of ``spec`` exists and holds a similar name."""
    path = Path(spec).expanduser()
    if not path.parent.is_dir():
        return ""
    names = sorted(p.name for p in path.parent.iterdir() if p.is_dir())
    close = difflib.get_close_matches(path.name, names, n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(str(Path(spec).parent / name) for name in close) + "?)"


def locate_hub_checkpoint(spec: str) -> Path | None:
    """Where the hub id ``spec`` (a name that is not a local folder) can be loaded from, decided without touching
    the network: its cached ``config.json``, or None when it is not cached but :func:`hub_downloads_allowed`.

    Otherwise a :class:`CheckpointError` says so at once, with a "did you mean" for a mistyped folder, instead of
    transformers retrying the hub for a minute. Both :func:`load_model` and ``load_vlm`` resolve hub ids here.
    """
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError

    cache = constants.HF_HUB_CACHE
    try:
        cached = try_to_load_from_cache(spec, CONFIG_FILE, cache_dir=cache)
    except HFValidationError:
        raise CheckpointError(f"{spec}: no such model folder{did_you_mean(spec)}, nor a valid hub id") from None
    if isinstance(cached, str):
        return Path(cached)
    if hub_downloads_allowed():
        return None
    raise CheckpointError(
        f"{spec}: no such folder{did_you_mean(spec)}, and not in the local hub cache ({cache}); to download "
        f"it from the Hugging Face hub, run once with HF_HUB_OFFLINE=0 set (or `hf download {spec}` first)")


def _load_hub_model(spec: str) -> ContrastiveModel:
    """A transformers CLIP or BLIP-retrieval model by hub id (the wrapper is chosen by its config's
    ``model_type``): from the local cache, or downloaded when :func:`hub_downloads_allowed`."""
    cached = locate_hub_checkpoint(spec)
    if cached is not None:
        return _load_transformers(spec, _read_json(cached).get("model_type"), local_files_only=True)
    return _load_transformers(spec, _remote_model_type(spec), local_files_only=False)


def _remote_model_type(spec: str) -> str:
    """The ``model_type`` of a hub checkpoint, fetching only its config.json. If that fails, CLIP (the default
    backend) is assumed: its loader then reports the download error in one line, naming the model."""
    from transformers import PretrainedConfig

    try:
        return str(PretrainedConfig.get_config_dict(spec)[0].get("model_type"))
    except (OSError, ValueError):
        return "clip"


#: transformers ``model_type`` -> (module, class) of the vlalign wrapper that loads it.
TRANSFORMERS_BACKENDS: dict[str, tuple[str, str]] = {
    "clip": ("vlalign.models.hf_clip", "HFCLIP"),
    "blip": ("vlalign.models.hf_blip", "HFBlip"),
}


def _load_transformers(name: str, model_type: str | None, local_files_only: bool | None = None) -> ContrastiveModel:
    """Load a transformers checkpoint with the wrapper registered for its ``model_type``."""
    import importlib

    if model_type not in TRANSFORMERS_BACKENDS:
        raise CheckpointError(f"{name}: model_type {model_type!r} is not supported; expected one of "
                              f"{sorted(TRANSFORMERS_BACKENDS)}")
    module, cls = TRANSFORMERS_BACKENDS[model_type]
    return getattr(importlib.import_module(module), cls).from_pretrained(name, local_files_only=local_files_only)
