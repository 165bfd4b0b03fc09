"""How low-rank is a fine-tuning change? The share of a weight change ΔW that the best rank-r matrix holds, per
layer, and what a LoRA of rank r on that layer costs: the measurement behind "could any rank-r adapter have
reached full fine-tuning here?".

By Eckart–Young, the best rank-r approximation of ΔW (in Frobenius norm) is its truncated SVD, and it holds
``Σ_{i<r} σ_i² / Σ_i σ_i²`` of ΔW's squared norm. A zero-initialized LoRA of rank r (peft's) can only ever add a
rank-r product, so on a layer where full fine-tuning's ΔW holds, say, 40% of its energy in the top r directions,
such an adapter can reproduce at most that share of it. (AdvLoRA's clustering init moves the weight by the trained
product minus the initial one, of rank up to 2r: :mod:`vlalign.models.adapters.advlora`.) A Conv2d's change is
taken, as LoRA factorizes it, over its output filters flattened to ``[out, in·k·k]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


def captured_energy(delta: torch.Tensor, ranks: Sequence[int]) -> list[float]:
    """For each r in ``ranks``, the share of ``‖delta‖²_F`` held by its best rank-r approximation (1.0 once r
    reaches the matrix's rank; 1.0 for an all-zero change). ``delta`` is 2-D, or a conv weight flattened to
    ``[out, in·k·k]``. Computed in float64."""
    if delta.dim() < 2:
        raise ValueError(f"captured_energy needs a matrix (or a conv weight), got shape {tuple(delta.shape)}")
    if any(r < 0 for r in ranks):
        raise ValueError(f"ranks must be >= 0, got {list(ranks)}")
    squared = torch.linalg.svdvals(delta.detach().flatten(1).to("cpu", torch.float64)).pow(2)
    total = float(squared.sum())
    if total == 0:
        return [1.0 for _ in ranks]
    cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), squared.cumsum(0)])
    return [float(cumulative[min(r, squared.numel())]) / total for r in ranks]


def lora_parameter_count(weight_shape: Sequence[int], rank: int) -> int:
    """Parameters of a rank-``rank`` LoRA on a weight of ``weight_shape``: r·(in + out) for a Linear ``[out, in]``;
    r·(in·k·k + out) for a Conv2d ``[out, in, k, k]`` (peft's k x k convolution into r channels, then a 1x1)."""
    if len(weight_shape) < 2 or rank < 1:
        raise ValueError(f"need a weight shape of >= 2 dims and rank >= 1, got {tuple(weight_shape)} and {rank}")
    out, fan_in = weight_shape[0], int(torch.Size(weight_shape[1:]).numel())
    return rank * (fan_in + out)


@dataclass
class LayerChange:
    """One weight matrix's fine-tuning change."""

    name: str
    shape: tuple[int, ...]
    #: ‖ΔW‖_F / ‖W₀‖_F (None when W₀ is all zeros).
    relative_change: float | None
    #: rank -> share of ‖ΔW‖² its best rank-r approximation holds.
    captured: dict[int, float]
    #: rank -> parameters of a rank-r LoRA on this layer.
    lora_params: dict[int, int]


def weight_change_profile(base: nn.Module, tuned: nn.Module, ranks: Sequence[int] = (1, 2, 4, 8, 16),
                          prefix: str = "") -> list[LayerChange]:
    """Every weight matrix or conv kernel (parameters of >= 2 dims whose name starts with ``prefix`` and whose
    name ends in ``weight``) that differs between ``base`` and ``tuned`` (same architecture), in ``base``'s order."""
    tuned_parameters = dict(tuned.named_parameters())
    changes = []
    for name, weight in base.named_parameters():
        if not name.startswith(prefix) or weight.dim() < 2 or not name.endswith("weight"):
            continue
        if name not in tuned_parameters or tuned_parameters[name].shape != weight.shape:
            raise ValueError(f"the tuned model has no parameter {name} of shape {tuple(weight.shape)}")
        original = weight.detach().to("cpu", torch.float64)
        delta = tuned_parameters[name].detach().to("cpu", torch.float64) - original
        if not delta.any():
            continue
        size = float(original.norm())
        changes.append(LayerChange(name, tuple(weight.shape), float(delta.norm()) / size if size > 0 else None,
                                   dict(zip(ranks, captured_energy(delta, ranks))),
                                   {r: lora_parameter_count(weight.shape, r) for r in ranks if r >= 1}))
    return changes
