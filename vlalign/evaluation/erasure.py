"""Reference points for neutralizing an attribute, built from counterfactual twins (pure functions).

A *twin* is the same scene rendered with the other value of the attribute (``PeopleWorld.sample(...,
swap_attribute=True)``), so ``twin_emb[i] - image_emb[i]`` is exactly what the attribute changes in image i's
embedding. Two references follow:

- the ideal eraser: ``normalize((1 - w) e + w e_twin)`` moves every image towards its twin; at w = 1/2 the image no
  longer carries the attribute at all, whatever the prompt. It shows what an attribute-free representation scores
  on a bias metric, and how close to w = 1/2 a path must pass for the metric to read "neutral";
- the best linear map: W minimizing ``Σ‖W e_i - e_twin,i‖² + ridge ‖W - I‖²_F`` over training images, swept along
  ``W_t = I + t (W - I)``. No image-side linear head can swap the attribute better (in that least-squares sense),
  so its sweep bounds what a linear head's neutral point can reach.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _check_pair(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"{name}: embeddings and twin embeddings must both be [N, D] of the same shape, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")


def twin_mixture(image_emb: torch.Tensor, twin_emb: torch.Tensor, w: float) -> torch.Tensor:
    """``normalize((1 - w) image_emb + w twin_emb)``: w = 0 is the image, 1 its twin, 1/2 the attribute erased."""
    _check_pair("twin_mixture", image_emb, twin_emb)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"w must lie in [0, 1], got {w}")
    return F.normalize((1.0 - w) * image_emb.float() + w * twin_emb.float(), dim=-1)


def fit_counterfactual_map(image_emb: torch.Tensor, twin_emb: torch.Tensor, ridge: float = 1.0) -> torch.Tensor:
    """The ``[D, D]`` matrix W minimizing ``Σ_i ‖W e_i − t_i‖² + ridge ‖W − I‖²_F`` (closed form, float64)."""
    _check_pair("fit_counterfactual_map", image_emb, twin_emb)
    if ridge <= 0:
        raise ValueError(f"ridge must be > 0, got {ridge}")
    e, t = image_emb.double(), twin_emb.double()
    eye = torch.eye(e.shape[1], dtype=torch.float64)
    gram = e.t() @ e + ridge * eye          # Σ e eᵀ + ridge I
    cross = t.t() @ e + ridge * eye         # Σ t eᵀ + ridge I;  W gram = cross
    return torch.linalg.solve(gram, cross.t()).t().float()


def interpolate_map(weight: torch.Tensor, t: float) -> torch.Tensor:
    """``I + t (W − I)``: t = 0 leaves embeddings unchanged, t = 1 applies W."""
    if weight.dim() != 2 or weight.shape[0] != weight.shape[1]:
        raise ValueError(f"weight must be a square matrix, got {tuple(weight.shape)}")
    eye = torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)
    return eye + t * (weight - eye)


def apply_map(image_emb: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``normalize(W e)`` for every row e of ``image_emb``."""
    return F.normalize(image_emb.float() @ weight.float().t(), dim=-1)


def explained_change(image_emb: torch.Tensor, twin_emb: torch.Tensor, weight: torch.Tensor) -> float:
    """Share of the attribute change ``t_i − e_i`` that W reproduces: ``1 − Σ‖W e_i − t_i‖² / Σ‖e_i − t_i‖²``."""
    _check_pair("explained_change", image_emb, twin_emb)
    e, t = image_emb.double(), twin_emb.double()
    total = (t - e).pow(2).sum()
    if float(total) == 0.0:
        raise ValueError("explained_change: the twins equal the images, so there is no change to explain")
    return float(1.0 - (e @ weight.double().t() - t).pow(2).sum() / total)


def window_below(t: Sequence[float], values: Sequence[float], threshold: float) -> tuple[float, float] | None:
    """The smallest and largest grid t whose value is <= ``threshold`` (None if none is)."""
    if len(t) != len(values):
        raise ValueError(f"t and values differ in length: {len(t)} vs {len(values)}")
    inside = [ti for ti, v in zip(t, values) if v <= threshold]
    return (min(inside), max(inside)) if inside else None
