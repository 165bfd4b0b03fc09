"""Language-modelling loss over the scored tokens of responses (pure functions of log-probabilities)."""

from __future__ import annotations

import torch


def language_modeling_loss(per_token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over the scored tokens of a batch: −Σ mask·log p / Σ mask.

    ``per_token_logprobs`` ``[B, T]`` are log p(y_t | image, prompt, y_<t) of the response tokens and ``mask``
    ``[B, T]`` marks the real ones (padding excluded). Every token weighs the same, as in LLaVA's training, so a
    long caption counts more than a one-word answer.
    """
    if per_token_logprobs.shape != mask.shape:
        raise ValueError(f"log-probabilities {tuple(per_token_logprobs.shape)} and mask {tuple(mask.shape)} differ in shape")
    count = mask.sum()
    if int(count) == 0:
        raise ValueError("no scored tokens in the batch")
    kept = torch.where(mask.bool(), per_token_logprobs, torch.zeros_like(per_token_logprobs))
    return -kept.sum() / count
