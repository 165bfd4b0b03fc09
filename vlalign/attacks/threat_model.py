"""Threat-model math shared by every attack: ε parsing and formatting, ℓp norms, projection onto the ε-ball,
ascent directions and random starts. Pure functions of tensors."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

NORMS = ("linf", "l2")


# --------------------------------------------------------------------------------------------- ε parsing

def parse_eps(text: str | float) -> float:
    """``'4/255'`` -> 0.01568..., ``'0.03'`` -> 0.03; ε must lie in (0, 1] (pixel units of [0, 1] images)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        raw = str(text).strip()
        try:
            if "/" in raw:
                num, den = raw.split("/", 1)
                value = float(num) / float(den)
            else:
                value = float(raw)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"eps must be a number or a fraction like 4/255, got {text!r}") from None
    check_eps(value)
    return value


class LinfTrainingAttack:
    """For run configs with an ℓ∞ training attack given as strings ``eps`` and ``attack_step_size``: their parsed
    values, the step defaulting to ε/4. (A plain mixin: a dataclass does not take its annotations as fields.)"""

    eps: str
    attack_step_size: str | None

    @property
    def epsilon(self) -> float:
        return parse_eps(self.eps)

    @property
    def step_size(self) -> float:
        return parse_eps(self.attack_step_size) if self.attack_step_size is not None else self.epsilon / 4


def check_counts(**counts: int) -> None:
    """Raise a ValueError naming the first count (steps, restarts, queries, …) that is below 1."""
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def check_eps(eps: float) -> None:
    """Raise a ValueError unless ``0 < eps <= 1`` (ε is measured on images in [0, 1])."""
    if not (isinstance(eps, (int, float)) and math.isfinite(eps)) or not 0 < eps <= 1:
        hint = f"; did you mean {eps:g}/255?" if isinstance(eps, (int, float)) and 1 < eps <= 255 else ""
        raise ValueError(f"eps must be in (0, 1] on images in [0, 1] (e.g. 4/255), got {eps!r}{hint}")


def format_eps(eps: float) -> str:
    """0.01568... -> ``'4/255'``; values that are not a whole number of grey levels print as ``'%g'``."""
    levels = eps * 255
    if abs(levels - round(levels)) < 1e-6 and round(levels) > 0:
        return f"{round(levels)}/255"
    return f"{eps:g}"


# ---------------------------------------------------------------------------------- pure threat-model math

def lp_norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample ℓ∞ or ℓ2 norm of a perturbation ``[N, ...]`` -> ``[N]``."""
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1)
    if norm == "l2":
        return flat.norm(dim=1)
    raise ValueError(f"unknown norm {norm!r}; expected one of {list(NORMS)}")


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float | torch.Tensor, norm: str) -> torch.Tensor:
    """Project ``x_adv`` onto {‖x_adv − x‖ ≤ ε} ∩ [0, 1].

    ℓ∞: clip δ to [−ε, ε], then clip x + δ to [0, 1] (the order torchattacks and Madry et al. use). ℓ2: scale δ
    to the ball, then clip to [0, 1]; clipping moves each coordinate towards x, so δ stays in the ball.
    """
    delta = x_adv - x
    if norm == "linf":
        delta = torch.clamp(delta, min=-eps, max=eps)
    elif norm == "l2":
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        delta = delta * torch.clamp(eps / norms, max=1.0)
    else:
        raise ValueError(f"unknown norm {norm!r}; expected one of {list(NORMS)}")
    return torch.clamp(x + delta, 0, 1)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit norm: sign(g) for ℓ∞, g/‖g‖₂ for ℓ2 (zero where g is zero).

    A NaN entry of g counts as zero in both (``sign(nan)`` is 0); for ℓ2, a sample with infinite entries steps
    along those entries' signs only, so one bad entry never turns the whole step into NaN.
    """
    if norm == "linf":
        return grad.sign()
    if norm == "l2":
        shape = (-1, *([1] * (grad.dim() - 1)))
        if not bool(torch.isfinite(grad).all()):
            grad = torch.nan_to_num(grad, nan=0.0, posinf=float("inf"), neginf=float("-inf"))
            infinite = torch.isinf(grad)
            grad = torch.where(infinite.flatten(1).any(1).view(shape), infinite * grad.sign(), grad)
        norms = grad.flatten(1).norm(dim=1).view(shape)
        return grad / norms.clamp_min(1e-12)
    raise ValueError(f"unknown norm {norm!r}; expected one of {list(NORMS)}")


def random_start(x: torch.Tensor, eps: float, norm: str,
                 generator: torch.Generator | Sequence[torch.Generator]) -> torch.Tensor:
    """A uniformly random point of the ε-ball around ``x``, clipped to [0, 1].

    ℓ∞: δ ~ U[−ε, ε]^d. ℓ2: uniform in the ball (Gaussian direction, radius ε·U^{1/d}). With a sequence of
    ``b`` generators, row ``j`` is drawn from generator ``j % b`` in row order, so each sample's start depends
    only on its own generator, not on which samples share the batch.
    """
    if not isinstance(generator, torch.Generator):
        rows = [random_start(x[j:j + 1], eps, norm, generator[j % len(generator)]) for j in range(x.shape[0])]
        return torch.cat(rows) if rows else x.clone()
    shape = x.shape
    if norm == "linf":
        delta = (torch.rand(shape, generator=generator) * 2 - 1) * eps
    elif norm == "l2":
        direction = torch.randn(shape, generator=generator)
        direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        d = x[0].numel()
        radius = eps * torch.rand(shape[0], generator=generator).pow(1.0 / d)
        delta = direction * radius.view(-1, *([1] * (x.dim() - 1)))
    else:
        raise ValueError(f"unknown norm {norm!r}; expected one of {list(NORMS)}")
    return torch.clamp(x + delta.to(device=x.device, dtype=x.dtype), 0, 1)


def check_images(images: torch.Tensor, what: str = "images") -> None:
    """Raise a ValueError unless ``images`` is a float tensor ``[B, 3, H, W]`` with values in [0, 1]."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise ValueError(f"{what} must be a float tensor in [0, 1]; got {getattr(images, 'dtype', type(images))} "
                         "(convert uint8 images with .float() / 255)")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{what} must have shape [B, 3, H, W], got {tuple(images.shape)}")
    if images.numel() and (float(images.min()) < 0 or float(images.max()) > 1):
        raise ValueError(f"{what} must lie in [0, 1], got values in [{float(images.min()):.3g}, {float(images.max()):.3g}]")
