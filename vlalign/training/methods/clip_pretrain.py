"""Contrastive image-text pretraining (CLIP's symmetric InfoNCE) as a method of the one loop.

Trains every parameter of a dual encoder (the mini models are pretrained this way) on captioned images.
Identical captions count as positives of each other (:func:`vlalign.losses.contrastive.clip_contrastive_loss`).
Under data parallelism every process gathers the whole global batch's embeddings (with gradient for its own), so
the loss is the one a single process would compute on the global batch.
"""

from __future__ import annotations

import zlib
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from vlalign.data.datasets import collate_for
from vlalign.losses.contrastive import clip_contrastive_loss
from vlalign.models.base import ContrastiveModel
from vlalign.training import distributed
from vlalign.training.method import Method, Stream


def caption_ids(captions: list[str]) -> torch.Tensor:
    """A 63-bit id per caption, equal for equal strings and the same in every process (two CRC-32s)."""
    ids = [(zlib.crc32(c.encode()) << 31) ^ zlib.adler32(c.encode()) for c in captions]
    return torch.tensor(ids, dtype=torch.long)


class ContrastivePretraining(Method):
    """Symmetric InfoNCE over a batch of (image, caption) pairs; ``data`` items hold ``pixels`` and ``caption``."""

    default_train = {"optimizer": "adamw", "lr": 1e-3, "betas": (0.9, 0.98), "weight_decay": 0.05}

    def __init__(self, model: ContrastiveModel, data: Dataset) -> None:
        super().__init__()
        self.model, self.data = model, data

    def streams(self) -> dict[str, Stream]:
        return {"data": Stream(self.data, collate=collate_for(self.data))}

    def trainable_module(self) -> nn.Module:
        return self.model

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        data = batch["data"]
        pixels = data["pixels"].float().div_(255.0)
        tokens = {k: v.to(pixels.device) for k, v in self.model.tokenize(list(data["caption"])).items()}
        images = distributed.gather_with_grad(self.model.encode_image(pixels))
        texts = distributed.gather_with_grad(self.model.encode_tokens(tokens))
        ids = distributed.gather(caption_ids(list(data["caption"])).to(pixels.device))
        scale = self.model.logit_scale
        loss = clip_contrastive_loss((scale * images @ texts.t()).float(), ids)
        return {"loss": loss, "logit_scale": scale.detach()}
