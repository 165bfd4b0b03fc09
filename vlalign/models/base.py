"""The one interface every contrastive image-text model in vlalign implements.

Images enter as float pixels in [0, 1] of shape ``[B, 3, H, W]``; resizing and normalization live inside the
model, so attacks and typographic renderers work in plain pixel space. Encoders return L2-normalized
embeddings unless asked not to. ``logit_scale`` is the multiplier 1/τ of the similarity logits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import torch
from torch import nn


class ContrastiveModel(nn.Module, ABC):
    """A CLIP-like dual encoder: ``f(x, y) = logit_scale * <I(x), T(y)>`` on normalized embeddings."""

    #: Side length the image tower sees after the model's own resizing.
    image_size: int
    #: Width of the shared embedding space.
    embed_dim: int

    @abstractmethod
    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Embed images given as float pixels in [0, 1], ``[B, 3, H, W]`` -> ``[B, D]``."""

    @abstractmethod
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenize texts into the tensors ``encode_tokens`` takes."""

    @abstractmethod
    def encode_tokens(self, tokens: dict[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
        """Embed tokenized texts -> ``[B, D]``."""

    @property
    @abstractmethod
    def image_encoder(self) -> nn.Module:
        """The image tower (every module whose parameters ``encode_image`` uses)."""

    @property
    @abstractmethod
    def text_encoder(self) -> nn.Module:
        """The text tower."""

    @property
    @abstractmethod
    def logit_scale(self) -> torch.Tensor:
        """The scalar multiplier 1/τ applied to cosine similarities."""

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Tokenize and embed ``texts`` on the model's device."""
        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of strings, not one string")
        if len(texts) == 0:
            raise ValueError("encode_text got an empty list of texts")
        tokens = {k: v.to(self.device) for k, v in self.tokenize(list(texts)).items()}
        return self.encode_tokens(tokens, normalize=normalize)

    def unknown_words(self, texts: Sequence[str]) -> list[str]:
        """Words of ``texts`` the text tower cannot represent (sorted). Subword tokenizers encode any text, so
        the default is none; a word-level tokenizer maps each unknown word to the same ``<unk>`` token."""
        return []

    def vocabulary_size(self) -> int | None:
        """Number of words a word-level tokenizer knows; None for subword tokenizers."""
        return None

    def image_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the image tower (the part preference optimization trains)."""
        return self.image_encoder.parameters()

    def text_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the text tower (frozen in every method of the papers)."""
        return self.text_encoder.parameters()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def similarity_logits(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """``f(x, y) = logit_scale * I(x)ᵀT(y)`` for every image-text pair -> ``[B_img, B_txt]``."""
        return self.logit_scale * image_embeddings @ text_embeddings.t()
