"""Losses: pure functions over logits, log-probabilities and embeddings."""

from vlalign.losses.contrastive import clip_contrastive_loss

__all__ = ["clip_contrastive_loss"]
