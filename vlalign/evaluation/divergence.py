"""Divergence of a fine-tuned policy from its reference on clean data (contrastive-PO Fig. 5a)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vlalign.data.image_set import ImageSet
from vlalign.models.embeddings import image_embeddings
from vlalign.losses.preference import kl_divergence
from vlalign.models.base import ContrastiveModel


@torch.no_grad()
def policy_logits(model: ContrastiveModel, images: ImageSet | torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """logit_scale · I(x)ᵀT(y) over ``prompts`` for every image -> ``[N, K]`` (on the CPU)."""
    text = model.encode_text(list(prompts)).float().cpu()
    return float(model.logit_scale) * image_embeddings(model, images) @ text.t()


def mean_kl(policy: torch.Tensor, reference: torch.Tensor, direction: str = "policy_ref") -> float:
    """Mean over images of KL(π_θ ‖ π_ref) (``policy_ref``) or KL(π_ref ‖ π_θ) from their logits."""
    if policy.shape != reference.shape:
        raise ValueError(f"logit shapes differ: {tuple(policy.shape)} vs {tuple(reference.shape)}")
    if direction == "policy_ref":
        return float(kl_divergence(policy.double(), reference.double()).mean())
    if direction == "ref_policy":
        return float(kl_divergence(reference.double(), policy.double()).mean())
    raise ValueError(f"direction must be 'policy_ref' or 'ref_policy', got {direction!r}")
