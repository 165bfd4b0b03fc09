"""Preference objectives by name (the ``method`` of a training config), over policy and reference logits.

Every objective maps ``(policy_logits [B, K], reference_logits [B, K], chosen [B], rejected [B], params)`` to a
scalar loss. Registering a new method is one entry in ``PREFERENCE_OBJECTIVES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from vlalign.losses import preference as po


@dataclass(frozen=True)
class ObjectiveParams:
    """Hyper-parameters the objectives read."""

    beta: float = 1.0
    label_smoothing: float = 0.1
    simpo_gamma: float = 0.5
    kto_desirable_weight: float = 1.0
    kto_undesirable_weight: float = 1.0
    #: How batch statistics (KTO's z_ref) average over the batch; data-parallel training passes a mean over the
    #: batches of every process (:func:`vlalign.training.distributed.global_mean`).
    batch_mean: Callable[[torch.Tensor], torch.Tensor] = torch.mean


Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, ObjectiveParams], torch.Tensor]


def _pairwise(policy_logits, reference_logits, chosen, rejected):
    lp, lr = po.log_policy(policy_logits), po.log_policy(reference_logits)
    return po.gather(lp, chosen), po.gather(lp, rejected), po.gather(lr, chosen), po.gather(lr, rejected)


def _dpo(policy_logits, reference_logits, chosen, rejected, p: ObjectiveParams) -> torch.Tensor:
    return po.dpo_loss(*_pairwise(policy_logits, reference_logits, chosen, rejected), p.beta).mean()


def _cdpo(policy_logits, reference_logits, chosen, rejected, p: ObjectiveParams) -> torch.Tensor:
    return po.dpo_loss(*_pairwise(policy_logits, reference_logits, chosen, rejected), p.beta, p.label_smoothing).mean()


def _ipo(policy_logits, reference_logits, chosen, rejected, p: ObjectiveParams) -> torch.Tensor:
    return po.ipo_loss(*_pairwise(policy_logits, reference_logits, chosen, rejected), p.beta).mean()


def _hinge(policy_logits, reference_logits, chosen, rejected, p: ObjectiveParams) -> torch.Tensor:
    return po.hinge_loss(*_pairwise(policy_logits, reference_logits, chosen, rejected), p.beta).mean()


def _simpo(policy_logits, reference_logits, chosen, rejected, p: ObjectiveParams) -> torch.Tensor:
    pw, pl, _, _ = _pairwise(policy_logits, reference_logits, chosen, rejected)
    return po.simpo_loss(pw, pl, p.beta, p.simpo_gamma).mean()


def _kto(policy_logits, reference_logits, chosen, rejected, p: ObjectiveParams) -> torch.Tensor:
    # Each triplet (x, y_w, y_l) becomes two unpaired samples: (x, y_w) desirable and (x, y_l) undesirable.
    pw, pl, rw, rl = _pairwise(policy_logits, reference_logits, chosen, rejected)
    z_ref = po.kto_reference_point(policy_logits, reference_logits, p.beta, p.batch_mean)
    desirable = torch.cat([torch.ones_like(chosen, dtype=torch.bool), torch.zeros_like(rejected, dtype=torch.bool)])
    return po.kto_loss(torch.cat([pw, pl]), torch.cat([rw, rl]), desirable, p.beta, z_ref,
                       p.kto_desirable_weight, p.kto_undesirable_weight).mean()


def _cross_entropy(policy_logits, reference_logits, chosen, rejected, p: ObjectiveParams) -> torch.Tensor:
    return F.cross_entropy(policy_logits, chosen)


PREFERENCE_OBJECTIVES: dict[str, Objective] = {
    "dpo": _dpo, "cdpo": _cdpo, "ipo": _ipo, "kto": _kto, "hinge": _hinge, "simpo": _simpo, "ce": _cross_entropy,
}

#: Paper defaults (App. F): DPO β=λ=1; IPO β=λ=0.01; KTO β=1.5, λ=0.01. Others follow DPO.
DEFAULT_BETA_LAMBDA: dict[str, tuple[float, float]] = {
    "dpo": (1.0, 1.0), "cdpo": (1.0, 1.0), "ipo": (0.01, 0.01), "kto": (1.5, 0.01), "hinge": (1.0, 1.0),
    "simpo": (2.0, 1.0), "ce": (1.0, 0.0),
}


def preference_objective(name: str) -> Objective:
    """The objective registered as ``name``."""
    if name not in PREFERENCE_OBJECTIVES:
        raise ValueError(f"unknown preference objective {name!r}; expected one of {sorted(PREFERENCE_OBJECTIVES)}")
    return PREFERENCE_OBJECTIVES[name]
