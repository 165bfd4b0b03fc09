"""The linear head W = UΣVᵀ of contrastive-PO §3.4 and training-free control through Σ^t (eq. 16)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlalign.models.base import ContrastiveModel


class LinearHead(nn.Module):
    """A square matrix W (initialized at the identity) applied to embeddings, which are then re-normalized."""

    def __init__(self, dim: int, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        if weight is not None and weight.shape != (dim, dim):
            raise ValueError(f"head weight must be [{dim}, {dim}], got {tuple(weight.shape)}")
        self.weight = nn.Parameter(torch.eye(dim) if weight is None else weight.clone())

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(embeddings @ self.weight.t(), dim=-1)

    def power(self, t: float) -> torch.Tensor:
        """W_t = U Σ^t Vᵀ (eq. 16). t = 1 gives W; t = 0 gives UVᵀ, an orthogonal map that preserves every
        similarity of normalized embeddings, i.e. the pretrained model's behaviour."""
        u, s, vh = torch.linalg.svd(self.weight.detach().double())
        return (u @ torch.diag(s.pow(t)) @ vh).to(self.weight.dtype)

    def singular_values(self) -> torch.Tensor:
        """σ_i of W, descending."""
        return torch.linalg.svdvals(self.weight.detach().double()).float()

    def orthogonality_error(self) -> float:
        """‖WᵀW − I‖_F: how far W is from an orthogonal map (0 keeps every pretrained similarity)."""
        w = self.weight.detach().double()
        return float(torch.linalg.matrix_norm(w.t() @ w - torch.eye(w.shape[0], dtype=w.dtype)))


class HeadedCLIP(ContrastiveModel):
    """A contrastive model with a linear head on both embeddings: f̃(x, y) = (W I(x))ᵀ(W T(y)) / τ, normalized."""

    def __init__(self, base: ContrastiveModel, head: LinearHead | None = None) -> None:
        super().__init__()
        self.base = base
        self.head = head if head is not None else LinearHead(base.embed_dim).to(next(base.parameters()))
        self.image_size = base.image_size
        self.embed_dim = base.embed_dim

    def _map(self, embeddings: torch.Tensor, normalize: bool) -> torch.Tensor:
        """W applied to the base's normalized embeddings; re-normalized unless ``normalize`` is False."""
        return self.head(embeddings) if normalize else embeddings @ self.head.weight.t()

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self._map(self.base.encode_image(pixels), normalize)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.base.tokenize(texts)

    def encode_tokens(self, tokens: dict[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
        return self._map(self.base.encode_tokens(tokens), normalize)

    def unknown_words(self, texts: Sequence[str]) -> list[str]:
        return self.base.unknown_words(texts)

    def vocabulary_size(self) -> int | None:
        return self.base.vocabulary_size()

    @property
    def image_encoder(self) -> nn.Module:
        return self.base.image_encoder

    @property
    def text_encoder(self) -> nn.Module:
        return self.base.text_encoder

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.base.logit_scale

    def with_power(self, t: float) -> "HeadedCLIP":
        """The same base model with head W_t = UΣ^tVᵀ (shares the base; the head is a new module)."""
        return HeadedCLIP(self.base, LinearHead(self.embed_dim, self.head.power(t)).to(self.head.weight.device))
