"""Put a vision encoder trained by vlalign into another generative VLM, leaving its projector and decoder untouched
(AdPO's small-to-large transfer: train the encoder on one VLM, plug it into another that shares its architecture).

Sources: a MiniCLIP (``mini``, a MiniCLIP folder, the output of ``vlalign train`` with TeCoA / FARE), a MiniVLM
folder (e.g. trained by AdPO), a transformers CLIP folder (``model_type: clip`` or ``clip_vision_model``), or a
LLaVA folder. Targets: a MiniVLM takes a MiniCLIP image tower; a LLaVA takes a CLIP vision transformer. Every key
and shape is checked first; a mismatch is a :class:`CheckpointError` naming both sides.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vlalign.io import read_json
from vlalign.models.checkpoint import CheckpointError, load_state_checked
from vlalign.models.mini_clip import MiniCLIPConfig
from vlalign.models.mini_vlm import MiniVLM, same_tower_architecture
from vlalign.models.vlm import GenerativeVLM


def _clip_body(module: nn.Module) -> nn.Module:
    """The CLIP vision transformer inside a CLIPVisionModel (transformers 4.x nests it as ``vision_model``)."""
    return getattr(module, "vision_model", module)


def _read_kind(folder: Path) -> tuple[str, dict]:
    path = folder / "config.json"
    if (folder / "head.safetensors").is_file():
        raise CheckpointError(f"{folder}: a linear-head run changes no encoder weights; there is no encoder to transfer")
    data = read_json(path, CheckpointError, "expected a MiniCLIP, MiniVLM, CLIP or LLaVA folder")
    kind = data.get("architecture") or data.get("model_type") if isinstance(data, dict) else None
    return str(kind), data


def load_vision_source(spec: str | Path,
                       dtype: torch.dtype = torch.float32) -> tuple[str, nn.Module, MiniCLIPConfig | None]:
    """The vision encoder named by ``spec`` -> (family ``"mini"`` or ``"clip"``, the module whose state is
    transferred, the MiniCLIP config for the mini family). A transformers checkpoint is loaded as ``dtype``
    (float32 by default, whatever it stores)."""
    from vlalign.models.loading import EMBEDDED_MODELS, load_mini_clip, load_model

    spec_str = str(spec)
    folder = Path(spec_str)
    if spec_str in EMBEDDED_MODELS:
        clip = load_model(spec_str)
        return "mini", clip.visual, clip.config
    if not folder.is_dir():
        raise CheckpointError(f"{spec_str}: encoder folder not found (expected a MiniCLIP, MiniVLM, CLIP or LLaVA folder)")
    kind, _ = _read_kind(folder)
    if kind == "MiniCLIP":
        clip = load_mini_clip(folder)
        return "mini", clip.visual, clip.config
    if kind == "MiniVLM":
        from vlalign.models.mini_vlm import load_mini_vlm

        vlm = load_mini_vlm(folder)
        return "mini", vlm.vision, vlm.config.vision
    if kind in ("clip", "clip_vision_model", "llava"):
        import transformers

        cls = {"clip": "CLIPModel", "clip_vision_model": "CLIPVisionModel",
               "llava": "LlavaForConditionalGeneration"}[kind]
        from vlalign.models.hf_clip import dtype_kwargs

        model = getattr(transformers, cls).from_pretrained(str(folder), local_files_only=True, **dtype_kwargs(dtype))
        if kind == "clip":
            return "clip", _clip_body(model.vision_model), None
        if kind == "clip_vision_model":
            return "clip", _clip_body(model), None
        from vlalign.models.hf_llava import _part

        return "clip", _clip_body(_part(model, "vision_tower")), None
    raise CheckpointError(f"{folder / 'config.json'}: {kind!r} is not a vision encoder vlalign can transfer; expected "
                          "a MiniCLIP, MiniVLM, CLIP or LLaVA folder")


def transfer_vision_encoder(encoder: str | Path, target: GenerativeVLM) -> GenerativeVLM:
    """Load the vision encoder named by ``encoder`` into ``target`` (in place; returned). Nothing but the vision
    encoder's weights (and, for a MiniVLM, its pixel statistics) changes."""
    family, source, source_config = load_vision_source(encoder)
    if isinstance(target, MiniVLM):
        if family != "mini":
            raise CheckpointError(f"{encoder}: a {family.upper()} vision encoder does not fit a MiniVLM, which takes a "
                                  "MiniCLIP image tower")
        differences = same_tower_architecture(source_config, target.config.vision)
        if differences:
            raise CheckpointError(f"{encoder}: its image tower differs from the target's: {'; '.join(differences)}")
        load_state_checked(target.vision, source.state_dict(), f"{encoder} (image tower)")
        target.set_pixel_statistics(source_config.pixel_mean, source_config.pixel_std)
        return target
    from vlalign.models.hf_llava import HFLlava

    if isinstance(target, HFLlava):
        if family != "clip":
            raise CheckpointError(f"{encoder}: a MiniCLIP image tower does not fit a LLaVA model, which takes a CLIP "
                                  "vision transformer")
        body = _clip_body(target.vision_encoder)
        state = {k: v.to(next(body.parameters()).dtype) for k, v in source.state_dict().items()}
        load_state_checked(body, state, f"{encoder} (CLIP vision transformer)")
        return target
    raise TypeError(f"do not know how to put a vision encoder into a {type(target).__name__}")

