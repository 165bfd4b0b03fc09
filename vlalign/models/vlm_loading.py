"""Resolve a generative-VLM spec (``mini-vlm``, ``mini-vlm-large``, a folder, or a LLaVA hub id) to a GenerativeVLM."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from vlalign.io import read_json
from vlalign.models.checkpoint import CheckpointError
from vlalign.models.mini_vlm import ARCHITECTURE, CONFIG_FILE, MiniVLM, load_mini_vlm
from vlalign.models.vlm import GenerativeVLM

#: Embedded mini VLMs: spec -> (asset folder, pretraining config that makes it).
EMBEDDED_VLMS: dict[str, tuple[str, str]] = {
    "mini-vlm": ("mini_vlm", "configs/pretrain_vlm.yaml"),
    "mini-vlm-large": ("mini_vlm_large", "configs/pretrain_vlm_large.yaml"),
}


def embedded_vlm_dir(spec: str) -> Path:
    """Folder of an embedded mini VLM inside the package (it may not be shipped yet)."""
    return Path(str(resources.files("vlalign") / "assets" / EMBEDDED_VLMS[spec][0]))


def vlm_kind(folder: Path) -> str:
    """``"mini"`` (a MiniVLM folder) or ``"llava"`` (a transformers LLaVA folder), from its ``config.json``."""
    path = folder / CONFIG_FILE
    data = read_json(path, CheckpointError, "expected a MiniVLM or transformers LLaVA folder")
    if isinstance(data, dict) and data.get("architecture") == ARCHITECTURE:
        return "mini"
    if isinstance(data, dict) and data.get("model_type") == "llava":
        return "llava"
    raise CheckpointError(f"{path}: not a generative VLM; expected \"architecture\": \"{ARCHITECTURE}\" or "
                          "\"model_type\": \"llava\"")


def load_vlm(spec: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> GenerativeVLM:
    """``mini-vlm`` / ``mini-vlm-large`` (embedded), a MiniVLM or LLaVA folder, or a LLaVA hub id, in eval mode.

    A hub id loads from the local cache, or is downloaded only when ``HF_HUB_OFFLINE=0`` is set (the same rule as
    :func:`~vlalign.models.loading.load_model`), so a mistyped run folder fails at once with a suggestion.
    ``dtype`` is a LLaVA's projector and decoder type (float32 by default, whatever the checkpoint stores); its
    vision tower, the part AdPO trains, stays float32. Mini VLMs are float32.
    """
    from vlalign.models.loading import EMBEDDED_MODELS, did_you_mean, locate_hub_checkpoint

    spec_str = str(spec)
    if spec_str in EMBEDDED_MODELS and not Path(spec_str).exists():
        raise CheckpointError(f"{spec_str} is an embedded contrastive (CLIP-style) model; this needs a generative VLM: "
                              f"{', '.join(EMBEDDED_VLMS)}, a MiniVLM or LLaVA folder, or a cached LLaVA hub id")
    if spec_str in EMBEDDED_VLMS:
        folder = embedded_vlm_dir(spec_str)
        if not (folder / CONFIG_FILE).is_file():
            raise CheckpointError(f"the embedded {spec_str} is not shipped in this version ({folder} is missing); "
                                  f"pretrain one with `vlalign pretrain-vlm --config {EMBEDDED_VLMS[spec_str][1]} "
                                  "--out DIR` and pass DIR")
        model: GenerativeVLM = load_mini_vlm(folder)
    elif Path(spec_str).is_dir():
        if vlm_kind(Path(spec_str)) == "mini":
            model = load_mini_vlm(spec_str)
        else:
            from vlalign.models.hf_llava import HFLlava

            model = HFLlava.from_pretrained(spec_str, local_files_only=True, dtype=dtype)
    elif Path(spec_str).exists():
        raise CheckpointError(f"{spec_str}: expected a model folder, got a file")
    elif spec_str.startswith((".", "/", "~")):
        raise CheckpointError(f"{spec_str}: model folder not found{did_you_mean(spec_str)}")
    else:
        cached = locate_hub_checkpoint(spec_str)
        if cached is not None:
            model_type = read_json(cached, CheckpointError, expect=dict).get("model_type")
            if model_type != "llava":
                raise CheckpointError(f"{cached}: model_type {model_type!r} is not a generative VLM; expected "
                                      "\"model_type\": \"llava\"")
        from vlalign.models.hf_llava import HFLlava

        model = HFLlava.from_pretrained(spec_str, local_files_only=cached is not None, dtype=dtype)
    if dtype != torch.float32 and isinstance(model, MiniVLM):
        raise CheckpointError(f"{spec_str}: a MiniVLM runs in float32; dtype {dtype} applies to a LLaVA model's "
                              "projector and decoder")
    return model.to(device).eval()
