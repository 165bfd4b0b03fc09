"""A contrastive model whose prompts carry one learned token (Defense-Prefix, Azuma & Matsui 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vlalign.models.base import ContrastiveModel
from vlalign.models.mini_clip import MiniCLIP


class DefensePrefixCLIP(ContrastiveModel):
    """A MiniCLIP whose prompts get one learned token embedding inserted before their last word (the class name in
    ``"a photo of a {}"`` prompts). Images are encoded by the unchanged base model."""

    def __init__(self, base: MiniCLIP, prefix: torch.Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(base, MiniCLIP):
            raise ValueError("Defense-Prefix needs a text tower that accepts token embeddings; "
                             f"it is implemented for MiniCLIP, got {type(base).__name__}")
        self.base = base
        width = base.text.token_embedding.weight.shape[1]
        init = base.text.token_embedding.weight.detach().mean(0) if prefix is None else prefix
        self.prefix = torch.nn.Parameter(init.clone().reshape(width))
        self.image_size, self.embed_dim = base.image_size, base.embed_dim

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.base.encode_image(pixels, normalize)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.base.tokenize(texts)

    def encode_tokens(self, tokens: dict[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        lengths = mask.sum(1)
        if int(lengths.max()) >= ids.shape[1]:
            raise ValueError("prompt too long to insert the Defense-Prefix token; shorten it")
        embedding = self.base.text.token_embedding
        rows = []
        for i in range(ids.shape[0]):
            n = int(lengths[i])  # <bos> w1 … wk <eos>; the class word is wk at n - 2
            emb = embedding(ids[i, :n])
            pad = embedding(ids[i, n:ids.shape[1] - 1])
            rows.append(torch.cat([emb[: n - 2], self.prefix[None], emb[n - 2:], pad]))
        new_mask = torch.zeros_like(mask)
        new_mask[torch.arange(ids.shape[1], device=ids.device)[None] < (lengths + 1)[:, None]] = 1
        features = self.base.text(ids, new_mask, torch.stack(rows))
        return F.normalize(features, dim=-1) if normalize else features

    @property
    def image_encoder(self) -> torch.nn.Module:
        return self.base.image_encoder

    @property
    def text_encoder(self) -> torch.nn.Module:
        return self.base.text_encoder

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.base.logit_scale
