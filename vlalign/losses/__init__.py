"""Losses: pure functions over logits, log-probabilities and embeddings."""

from vlalign.losses.contrastive import clip_contrastive_loss
from vlalign.losses.preference import (
    dpo_loss, gather, hinge_loss, ipo_loss, kl_divergence, kto_loss, kto_reference_point, log_policy, policy_ratio,
    regularization_kl, simpo_loss,
)

__all__ = ["clip_contrastive_loss", "dpo_loss", "gather", "hinge_loss", "ipo_loss", "kl_divergence", "kto_loss",
           "kto_reference_point", "log_policy", "policy_ratio", "regularization_kl", "simpo_loss"]
