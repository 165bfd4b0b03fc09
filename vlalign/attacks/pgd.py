"""Projected gradient descent (ascent on the loss).

Paper: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018.

Threat model: ‖x_adv − x‖∞ ≤ ε (``norm="linf"``, steps α·sign(∇)) or ‖x_adv − x‖₂ ≤ ε (``norm="l2"``,
steps α·∇/‖∇‖₂), x_adv ∈ [0, 1]. Defaults: 10 steps, α = 2.5·ε/steps (Madry et al.'s rule), a uniformly
random start, 1 restart. Restarts run as one batch (restarts × images); each step costs one forward and one
backward pass of that batch. Targeted or untargeted is the objective's choice (e.g.
``ZeroShotObjective(...).targeted(targets)``): PGD maximizes whatever loss it is given.

``keep="last"`` returns the final iterate (Madry et al.; what adversarial training uses); ``keep="best"``
returns per sample the highest-loss fooled iterate, else the highest-loss one (AutoAttack's bookkeeping,
stronger for evaluation, at the cost of one extra forward pass for the final iterate).
"""

from __future__ import annotations

import torch

from vlalign.attacks.base import Attack, AttackResult, BestTracker, Objective, select_over_restarts
from vlalign.attacks.threat_model import ascent_direction, check_counts, project, random_start


class PGD(Attack):
    """ℓ∞ / ℓ2 PGD with random start and batched restarts (per-sample seeds make each start independent of the
    batch)."""

    per_sample_seeds = True

    def __init__(self, eps: float, norm: str = "linf", steps: int = 10, step_size: float | None = None,
                 random_start: bool = True, restarts: int = 1, keep: str = "best") -> None:
        super().__init__(eps, norm)
        check_counts(steps=steps, restarts=restarts)
        if keep not in ("last", "best"):
            raise ValueError(f"keep must be 'last' or 'best', got {keep!r}")
        if step_size is not None and not step_size > 0:
            raise ValueError(f"step_size must be > 0, got {step_size}")
        self.steps = steps
        self.step_size = step_size if step_size is not None else 2.5 * eps / steps
        self.random_start = random_start
        self.restarts = restarts
        self.keep = keep

    def run(self, objective: Objective, images: torch.Tensor, generator: torch.Generator) -> AttackResult:
        b, r = images.shape[0], self.restarts
        x = images.repeat(r, 1, 1, 1)
        index = torch.arange(b, device=images.device).repeat(r)
        start = random_start(x, self.eps, self.norm, generator) if self.random_start else x.clone()
        return self.iterate(objective, x, index, start, r)

    def iterate(self, objective: Objective, x: torch.Tensor, index: torch.Tensor, start: torch.Tensor,
                restarts: int = 1) -> AttackResult:
        """PGD from a given ``start`` (rows of ``x``; ``index`` maps rows to the objective's samples).

        Call through :meth:`__call__` (which sets eval mode) unless you set up the model yourself.
        """
        x_adv = start.detach()
        tracker = BestTracker(x_adv) if self.keep == "best" else None
        history: list[torch.Tensor] = []  # kept on the device; one sync at the end, not one per step
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            value = objective(x_adv, index)
            grad, = torch.autograd.grad(value.loss.sum(), x_adv)
            x_adv = x_adv.detach()
            history.append(value.loss.detach().float().mean())
            if tracker is not None:
                tracker.update(x_adv, value.loss, value.fooled)
            x_adv = project(x_adv + self.step_size * ascent_direction(grad, self.norm), x, self.eps, self.norm)
        if tracker is None and restarts == 1:
            return AttackResult(x_adv, history={"loss": torch.stack(history).tolist()})
        with torch.no_grad():
            final = objective(x_adv, index)
        history.append(final.loss.float().mean())
        if tracker is not None:
            tracker.update(x_adv, final.loss, final.fooled)
            x_out, loss, fooled = tracker.x, tracker.loss, (tracker.fooled if final.fooled is not None else None)
        else:
            x_out, loss, fooled = x_adv, final.loss.float(), final.fooled
        x_out, loss, fooled = select_over_restarts(x_out, loss, fooled, restarts)
        return AttackResult(x_out, loss, fooled, history={"loss": torch.stack(history).tolist()})
