"""transformers ``BlipForImageTextRetrieval`` behind vlalign's ContrastiveModel interface.

The contrastive embeddings are BLIP's image-text contrastive (ITC) features: the projected, normalized [CLS]
states of the vision transformer (``vision_proj``) and of the text encoder run without cross-attention
(``text_proj``), exactly as the model's own ``forward(use_itm_head=False)`` computes them. BLIP also has an
image-text matching (ITM) head, a cross-attention pass over image and text that classifies the pair as
matching or not; :meth:`HFBlip.itm_scores` exposes it for re-ranking the ITC top-k, as BLIP evaluates
retrieval (:func:`vlalign.evaluation.retrieval_eval.itm_reranked_recall`).

Temperature: the original BLIP learns ``temp`` (initialized at 0.07) but the transformers port of the
retrieval model drops it, so ``logit_scale`` is ``exp(config.logit_scale_init_value)`` (1/0.07 by default), a
constant. It scales training losses and cross-entropy attacks; it never changes a ranking.

Images: BLIP's processor resizes both sides to ``image_size`` (bicubic, no crop) and normalizes with CLIP's
statistics; :meth:`HFBlip.preprocess` does the same in torch, so attacks differentiate through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vlalign.models.base import ContrastiveModel
from vlalign.models.hf_clip import (
    OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, _size_value, _Tower, load_transformers_parts,
)

def _image_processor_class() -> type:
    """BLIP's image processor; the PIL variant (transformers 5.x) avoids the torchvision warning."""
    try:
        from transformers import BlipImageProcessorPil as processor_class
    except ImportError:  # transformers 4.x
        from transformers import BlipImageProcessor as processor_class
    return processor_class


class HFBlip(ContrastiveModel):
    """A transformers BlipForImageTextRetrieval with its tokenizer and image-processor settings."""

    def __init__(self, model: nn.Module, tokenizer: object, image_mean: Sequence[float], image_std: Sequence[float],
                 image_size: int, max_text_length: int = 64) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.register_buffer("mean", torch.tensor(list(image_mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(image_std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.image_size = int(image_size)
        self.embed_dim = int(model.config.image_text_hidden_size)
        self.max_text_length = min(int(max_text_length), int(model.config.text_config.max_position_embeddings))
        self.register_buffer("_logit_scale", torch.tensor(float(model.config.logit_scale_init_value)).exp(),
                             persistent=False)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, local_files_only: bool | None = None,
                        max_text_length: int = 64, dtype: torch.dtype = torch.float32) -> "HFBlip":
        """Load model, tokenizer and processor settings from a hub id or folder (``local_files_only`` defaults
        to True for folders and when ``HF_HUB_OFFLINE`` is set). ``dtype`` (float32 by default, whatever the
        checkpoint stores) is the weights' type; half precision is for inference only."""
        from transformers import BlipForImageTextRetrieval

        model, tokenizer, processor = load_transformers_parts(BlipForImageTextRetrieval, name_or_path,
                                                              local_files_only, "BLIP", _image_processor_class(),
                                                              dtype=dtype)
        if processor is not None:
            mean, std = processor.image_mean, processor.image_std
            size = _size_value(getattr(processor, "size", None), model.config.vision_config.image_size)
        else:
            mean, std, size = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, int(model.config.vision_config.image_size)
        model.eval()
        return cls(model, tokenizer, mean, std, size, max_text_length)

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """Resize to ``image_size`` x ``image_size`` (bicubic, antialiased) and normalize: differentiable."""
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected pixels [B, 3, H, W], got {tuple(pixels.shape)}")
        if tuple(pixels.shape[-2:]) != (self.image_size, self.image_size):
            pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bicubic",
                                   align_corners=False, antialias=True).clamp(0, 1)
        return (pixels - self.mean) / self.std

    def image_states(self, pixels: torch.Tensor) -> torch.Tensor:
        """The vision transformer's output states ``[B, 1 + patches, width]`` (what ITM cross-attends to)."""
        # Preprocessing runs in the pixels' dtype; a half-precision model gets its input cast to its own dtype.
        inputs = self.preprocess(pixels).to(next(self.model.vision_model.parameters()).dtype)
        return self.model.vision_model(pixel_values=inputs).last_hidden_state

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.model.vision_proj(self.image_states(pixels)[:, 0, :])
        return F.normalize(features, dim=-1) if normalize else features

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_text_length,
                                 return_tensors="pt")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def encode_tokens(self, tokens: dict[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
        states = self.model.text_encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
        features = self.model.text_proj(states[:, 0, :])
        return F.normalize(features, dim=-1) if normalize else features

    def itm_scores_from_states(self, states: torch.Tensor, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """ITM logit of the "match" class for each (image states, text) pair -> ``[B]`` (BLIP's re-ranking score)."""
        if states.shape[0] != tokens["input_ids"].shape[0]:
            raise ValueError(f"got {states.shape[0]} images for {tokens['input_ids'].shape[0]} texts")
        image_mask = torch.ones(states.shape[:-1], dtype=torch.long, device=states.device)
        hidden = self.model.text_encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                                         encoder_hidden_states=states, encoder_attention_mask=image_mask).last_hidden_state
        return self.model.itm_head(hidden[:, 0, :])[:, 1]

    def itm_scores(self, pixels: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """ITM "match" logits of the pairs (pixels[i], texts[i]) -> ``[B]``."""
        tokens = {k: v.to(self.device) for k, v in self.tokenize(texts).items()}
        return self.itm_scores_from_states(self.image_states(pixels), tokens)

    @property
    def image_encoder(self) -> nn.Module:
        return _Tower(self.model.vision_model, self.model.vision_proj)

    @property
    def text_encoder(self) -> nn.Module:
        return _Tower(self.model.text_encoder, self.model.text_proj)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self._logit_scale

    def save_pretrained(self, path: str | Path) -> None:
        """Write model, tokenizer and processor settings so ``from_pretrained(path)`` restores this model."""
        self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))
        _image_processor_class()(
            size={"height": self.image_size, "width": self.image_size},
            image_mean=self.mean.flatten().tolist(), image_std=self.std.flatten().tolist(),
        ).save_pretrained(str(path))
