"""Per-sample attack losses on logits, all to be *maximized* by the attacker. Pure functions of tensors.

``logits`` is ``[N, K]``, ``labels`` and ``targets`` are ``[N]`` class indices. The DLR losses are Croce & Hein
(2020), eq. (5) and (6): invariant to shifting and rescaling the logits, so a large logit scale (CLIP's 1/τ
of up to 100) cannot saturate them the way it saturates the softmax of cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOGIT_LOSSES = ("ce", "ce-targeted", "dlr", "dlr-targeted", "margin", "similarity")
TARGETED_LOSSES = ("ce-targeted", "dlr-targeted")


def _check(logits: torch.Tensor, labels: torch.Tensor, min_classes: int, name: str) -> None:
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"{name}: expected logits [N, K] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if logits.shape[1] < min_classes:
        raise ValueError(f"{name} needs at least {min_classes} classes, got {logits.shape[1]}")


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Untargeted: CE(z, y) per sample (higher = further from the true class)."""
    _check(logits, labels, 2, "cross_entropy_loss")
    return F.cross_entropy(logits, labels, reduction="none")


def targeted_cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targeted: −CE(z, t) per sample (higher = closer to the target class)."""
    _check(logits, targets, 2, "targeted_cross_entropy_loss")
    return -F.cross_entropy(logits, targets, reduction="none")


def _true_and_best_other(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true, others.amax(1)


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """max_{i≠y} z_i − z_y: positive exactly when the sample is misclassified (Carlini & Wagner 2017)."""
    _check(logits, labels, 2, "margin_loss")
    true, other = _true_and_best_other(logits, labels)
    return other - true


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio, eq. (5): −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3), π the sorted order."""
    _check(logits, labels, 3, "dlr_loss")
    true, other = _true_and_best_other(logits, labels)
    top = logits.sort(1, descending=True).values
    return -(true - other) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targeted DLR, eq. (6): −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2)."""
    _check(logits, labels, 4, "targeted_dlr_loss")
    top = logits.sort(1, descending=True).values
    true = logits.gather(1, labels[:, None]).squeeze(1)
    target = logits.gather(1, targets[:, None]).squeeze(1)
    return -(true - target) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def logit_loss(name: str, logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """The loss ``name`` (one of :data:`LOGIT_LOSSES`) of ``logits``; targeted losses need ``targets``."""
    if name in TARGETED_LOSSES and targets is None:
        raise ValueError(f"loss {name!r} is targeted and needs targets")
    if name == "ce":
        return cross_entropy_loss(logits, labels)
    if name == "ce-targeted":
        return targeted_cross_entropy_loss(logits, targets)
    if name == "dlr":
        return dlr_loss(logits, labels)
    if name == "dlr-targeted":
        return targeted_dlr_loss(logits, labels, targets)
    if name == "margin":
        return margin_loss(logits, labels)
    if name == "similarity":
        # Lower the matched logit itself: for retrieval, pushes the image away from its own caption.
        _check(logits, labels, 1, "similarity loss")
        return -logits.gather(1, labels[:, None]).squeeze(1)
    raise ValueError(f"unknown logit loss {name!r}; expected one of {list(LOGIT_LOSSES)}")
