"""Symmetric InfoNCE (CLIP's pretraining loss), with duplicate captions counted as positives."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_contrastive_loss(logits_per_image: torch.Tensor, text_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropies over a square logit matrix.

    With ``text_ids`` (one id per caption, equal ids for identical captions), every pair whose captions are
    identical is a positive and the target is uniform over them; without it, only the diagonal is positive
    (plain CLIP). A procedurally captioned world repeats captions often, and treating repeats as negatives
    would push apart embeddings that should coincide.
    """
    n = logits_per_image.shape[0]
    if logits_per_image.shape != (n, n):
        raise ValueError(f"expected a square [B, B] logit matrix, got {tuple(logits_per_image.shape)}")
    if text_ids is None:
        target = torch.arange(n, device=logits_per_image.device)
        return 0.5 * (F.cross_entropy(logits_per_image, target) + F.cross_entropy(logits_per_image.t(), target))
    same = (text_ids[:, None] == text_ids[None, :]).to(logits_per_image.dtype)
    target = same / same.sum(1, keepdim=True)
    loss_i = -(target * F.log_softmax(logits_per_image, dim=1)).sum(1).mean()
    loss_t = -(target * F.log_softmax(logits_per_image.t(), dim=1)).sum(1).mean()
    return 0.5 * (loss_i + loss_t)
