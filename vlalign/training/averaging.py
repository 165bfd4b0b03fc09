"""Weight averaging along the fine-tuning trajectory: Beta Moving Average (BMA, contrastive-PO App. E) and EMA."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn


def beta_pdf(x: float, gamma: float) -> float:
    """Density of Beta(γ, γ) at x ∈ (0, 1)."""
    if not 0 < x < 1:
        raise ValueError(f"x must be in (0, 1), got {x}")
    log_norm = 2 * math.lgamma(gamma) - math.lgamma(2 * gamma)
    return math.exp((gamma - 1) * (math.log(x) + math.log1p(-x)) - log_norm)


def bma_weight(t: int, total: int, gamma: float) -> float:
    """α_t = Beta(γ, γ)((t + 0.5)/(T + 1)), eq. (38), for t = 0 … T (t = 0 is the pretrained model)."""
    if not 0 <= t <= total:
        raise ValueError(f"t must be in [0, {total}], got {t}")
    return beta_pdf((t + 0.5) / (total + 1), gamma)


Weights = Mapping[str, torch.Tensor]


def _trainable(source: nn.Module | Weights) -> Weights:
    """The weights to average: a mapping as it is, a module's trainable parameters."""
    if isinstance(source, nn.Module):
        return {n: p.detach() for n, p in source.named_parameters() if p.requires_grad}
    return source


class WeightAverager:
    """Running average of named weights, updated after every optimizer step.

    The weights are a mapping of tensors (the loop passes :meth:`vlalign.training.method.Method.averaged_weights`:
    the model's weights as it computes with them, so an adapter run averages W₀ + s·B A, not the factors) or a
    module, whose trainable parameters are averaged.

    ``bma``: θ_t^BMA = (Σ_{k<t} α_k · θ_{t−1}^BMA + α_t θ_t) / Σ_{k≤t} α_k (eq. 39, the running form of the
    weighted ensemble of eq. 37), starting from the pretrained θ_0. ``ema``: θ ← d·θ + (1 − d)·θ_t.
    ``none``: the last weights.
    """

    def __init__(self, weights: nn.Module | Weights, kind: str, total_steps: int, gamma: float = 0.7,
                 decay: float = 0.99) -> None:
        if kind not in ("bma", "ema", "none"):
            raise ValueError(f"averaging must be 'bma', 'ema' or 'none', got {kind!r}")
        self.kind, self.total, self.gamma, self.decay = kind, total_steps, gamma, decay
        initial = _trainable(weights)
        self.names = list(initial)
        self.average = {n: initial[n].detach().clone() for n in self.names}
        self.weight_sum = bma_weight(0, total_steps, gamma) if kind == "bma" else 0.0
        self.step = 0

    @torch.no_grad()
    def update(self, weights: nn.Module | Weights) -> None:
        """Fold in the current weights as θ_{step+1}."""
        self.step += 1
        current = _trainable(weights)
        if self.kind == "bma":
            alpha = bma_weight(min(self.step, self.total), self.total, self.gamma)
            new_sum = self.weight_sum + alpha
            for n in self.names:
                self.average[n].mul_(self.weight_sum / new_sum).add_(current[n].detach(), alpha=alpha / new_sum)
            self.weight_sum = new_sum
        elif self.kind == "ema":
            for n in self.names:
                self.average[n].mul_(self.decay).add_(current[n].detach(), alpha=1 - self.decay)
        else:
            for n in self.names:
                self.average[n].copy_(current[n].detach())

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the averaged weights into the parameters of ``module`` of the same names."""
        params = dict(module.named_parameters())
        for n in self.names:
            params[n].copy_(self.average[n])

    def state_dict(self) -> dict:
        return {"average": self.average, "weight_sum": self.weight_sum, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; a ``KeyError`` names the first averaged weight the state lacks."""
        missing = [n for n in self.names if n not in state["average"]]
        if missing:
            raise KeyError(f"the saved weight average has no '{missing[0]}' ({len(missing)} of {len(self.names)} "
                           "averaged weights missing)")
        for n in self.names:
            self.average[n].copy_(state["average"][n])
        self.weight_sum, self.step = float(state["weight_sum"]), int(state["step"])
