"""Preference-optimization losses for a contrastive model viewed as a one-step policy (contrastive-PO §3).

The policy over K candidate texts is π(y|x) = softmax_y f(x, y) with f(x, y) = I(x)ᵀT(y)/τ. Every loss here takes
log-probabilities (or logits) as tensors and returns a per-sample loss tensor; callers take the mean. Nothing
here touches models, devices or data.

Notation: ``policy_chosen`` = log π_θ(y_w|x), ``reference_chosen`` = log π_ref(y_w|x), and likewise for the
rejected y_l. h = (log π_θ(y_w) − log π_θ(y_l)) − (log π_ref(y_w) − log π_ref(y_l)) is the policy ratio of eq. (8).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def log_policy(logits: torch.Tensor) -> torch.Tensor:
    """log π(y|x) over the last dimension of similarity logits ``[B, K]``."""
    return F.log_softmax(logits, dim=-1)


def gather(log_probs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``log_probs[i, index[i]]`` for every row i."""
    return log_probs.gather(-1, index.long().unsqueeze(-1)).squeeze(-1)


def policy_ratio(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
                 reference_rejected: torch.Tensor) -> torch.Tensor:
    """h_π(y_w, y_l, x) of eq. (8)."""
    return (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO, eq. (5): −log σ(β h). With ``label_smoothing`` ε > 0 this is conservative DPO (cDPO / robust DPO):
    −(1−ε) log σ(β h) − ε log σ(−β h), for preference labels flipped with probability ε. Equals log 2 at h = 0."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    logits = beta * policy_ratio(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def ipo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO, eq. (6): (h − 1/(2β))². Equals (1/(2β))² at h = 0."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    h = policy_ratio(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    return (h - 1.0 / (2.0 * beta)) ** 2


def hinge_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
               reference_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """SLiC-style hinge: max(0, 1 − β h). Equals 1 at h = 0."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return torch.relu(1.0 - beta * policy_ratio(policy_chosen, policy_rejected, reference_chosen, reference_rejected))


def simpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, beta: float, gamma: float = 0.5) -> torch.Tensor:
    """SimPO: −log σ(β (log π_θ(y_w) − log π_θ(y_l)) − γ); reference-free (a one-token 'sequence' needs no
    length normalization)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return -F.logsigmoid(beta * (policy_chosen - policy_rejected) - gamma)


def kto_reference_point(policy_logits: torch.Tensor, reference_logits: torch.Tensor, beta: float,
                        batch_mean: Callable[[torch.Tensor], torch.Tensor] = torch.mean) -> torch.Tensor:
    """z_ref of eq. (7): β · mean over the batch of KL(π_θ(·|x) ‖ π_ref(·|x)), computed exactly over the K texts,
    clamped at 0 and detached (as in the KTO paper). It uses every image of the batch, so it is defined whether the
    batch holds desirable samples, undesirable ones, or both."""
    kl = batch_mean(kl_divergence(policy_logits, reference_logits).detach())
    return (beta * kl).clamp(min=0).detach()


def kto_loss(policy_logps: torch.Tensor, reference_logps: torch.Tensor, desirable: torch.Tensor, beta: float,
             reference_point: torch.Tensor | float = 0.0, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> torch.Tensor:
    """KTO, eq. (7): w(y)(1 − v(x, y)) with r = β log(π_θ/π_ref), v = σ(r − z_ref) for desirable y and
    σ(z_ref − r) for undesirable y. Equals w(y)/2 when r = z_ref = 0."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    reward = beta * (policy_logps - reference_logps)
    desirable = desirable.bool()
    value = torch.where(desirable, torch.sigmoid(reward - reference_point), torch.sigmoid(reference_point - reward))
    weight = torch.where(desirable, torch.full_like(reward, desirable_weight), torch.full_like(reward, undesirable_weight))
    return weight * (1.0 - value)


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row, exactly over the last dimension, from logits (any scale) -> ``[B]``."""
    log_p = F.log_softmax(p_logits, dim=-1)
    log_q = F.log_softmax(q_logits, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def regularization_kl(policy_logits: torch.Tensor, reference_logits: torch.Tensor,
                      direction: str = "policy_ref") -> torch.Tensor:
    """L_reg of eq. (11) per image. ``policy_ref`` = KL(π_θ ‖ π_ref) as the paper writes it (the default);
    ``ref_policy`` = KL(π_ref ‖ π_θ), as the paper's public code computes it."""
    if direction == "policy_ref":
        return kl_divergence(policy_logits, reference_logits)
    if direction == "ref_policy":
        return kl_divergence(reference_logits, policy_logits)
    raise ValueError(f"direction must be 'policy_ref' or 'ref_policy', got {direction!r}")
