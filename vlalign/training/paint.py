"""PAINT (Ilharco et al. 2022): fine-tune, then interpolate θ_α = (1−α)θ₀ + αθ₁ and pick α on validation data."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from vlalign.models.base import ContrastiveModel


def interpolate_state(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 − α)·start + α·end for every floating-point tensor (others are taken from ``end``)."""
    if set(start) != set(end):
        raise ValueError("cannot interpolate state dicts with different keys")
    return {k: torch.lerp(start[k], end[k], alpha) if start[k].is_floating_point() else end[k] for k in start}


@dataclass
class PaintResult:
    model: ContrastiveModel
    alpha: float
    scores: dict[float, float]


@torch.no_grad()
def paint(zero_shot: ContrastiveModel, finetuned: ContrastiveModel, alphas: Sequence[float],
          validate: Callable[[ContrastiveModel], float]) -> PaintResult:
    """Interpolate the image towers of ``zero_shot`` and ``finetuned`` and keep the α that ``validate`` scores best."""
    if not alphas:
        raise ValueError("need at least one interpolation coefficient")
    start = {k: v.detach().clone() for k, v in zero_shot.image_encoder.state_dict().items()}
    end = {k: v.detach().clone() for k, v in finetuned.image_encoder.state_dict().items()}
    model = copy.deepcopy(finetuned)
    scores = {}
    for alpha in alphas:
        model.image_encoder.load_state_dict(interpolate_state(start, end, float(alpha)))
        scores[float(alpha)] = float(validate(model))
    best = max(scores, key=lambda a: (scores[a], -abs(a - 0.5)))
    model.image_encoder.load_state_dict(interpolate_state(start, end, best))
    return PaintResult(model.eval(), best, scores)
