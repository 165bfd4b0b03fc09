"""Square Attack: score-based black-box random search.

Paper: Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient black-box adversarial attack
via random search", ECCV 2020 (Algorithm 1, ℓ∞ version; the black-box member of AutoAttack).

Threat model: ‖x_adv − x‖∞ ≤ ε, x_adv ∈ [0, 1]; uses only the model's scores, never a gradient. Start: vertical
stripes of ±ε. Each query redraws one random square window of side ``√(p·H·W)`` to ±ε per channel and keeps it
if the loss rises; p starts at ``p_init`` = 0.8 (AutoAttack's value) and halves on the paper's schedule. On logit
objectives it maximizes the margin loss max_{i≠y} z_i − z_y (as the paper does), otherwise the objective's own
loss. Defaults: 1000 queries, 1 restart. Every query is one forward pass over the images still unfooled, so a
black-box attack that beats PGD/APGD points to masked gradients, not to a stronger attack.
"""

from __future__ import annotations

import math

import torch

from vlalign.attacks.base import Attack, AttackResult, Objective, select_over_restarts
from vlalign.attacks.threat_model import check_counts
from vlalign.attacks.objectives import LogitObjective

# Iterations (of 10,000) after which p halves: the paper's schedule, rescaled to the query budget.
_P_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(iteration: int, queries: int, p_init: float) -> float:
    """Fraction p of the image a window covers at ``iteration`` of ``queries`` (paper's piecewise schedule)."""
    scaled = int(iteration / queries * 10000)
    halvings = sum(scaled > s for s in _P_SCHEDULE)
    return p_init / 2 ** halvings


class Square(Attack):
    """ℓ∞ Square Attack (random search over square windows)."""

    norm = "linf"
    white_box = False

    def __init__(self, eps: float, queries: int = 1000, p_init: float = 0.8, restarts: int = 1) -> None:
        super().__init__(eps)
        check_counts(queries=queries, restarts=restarts)
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        self.queries = queries
        self.p_init = p_init
        self.restarts = restarts

    @torch.no_grad()
    def run(self, objective: Objective, images: torch.Tensor, generator: torch.Generator) -> AttackResult:
        if isinstance(objective, LogitObjective) and objective.loss in ("ce", "dlr"):
            objective = objective.with_loss("margin")
        b, r = images.shape[0], self.restarts
        x = images.repeat(r, 1, 1, 1)
        index = torch.arange(b, device=images.device).repeat(r)
        n, c, h, w = x.shape
        device = x.device
        # Vertical stripes: one ±ε value per (image, channel, column).
        stripes = (torch.randint(0, 2, (n, c, 1, w), generator=generator) * 2 - 1).to(device, x.dtype)
        x_best = torch.clamp(x + self.eps * stripes, 0, 1)
        value = objective(x_best, index)
        loss_best = value.loss.float()
        fooled = value.fooled
        history = [float(loss_best.mean())]
        rows_h = torch.arange(h, device=device)
        rows_w = torch.arange(w, device=device)
        for i in range(self.queries - 1):
            active = torch.arange(n, device=device) if fooled is None else (~fooled).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            m = active.numel()
            p = square_fraction(i, self.queries, self.p_init)
            side = min(max(int(round(math.sqrt(p * h * w))), 1), h - 1, w - 1) if min(h, w) > 1 else 1
            top = torch.randint(0, h - side + 1, (m,), generator=generator).to(device)
            left = torch.randint(0, w - side + 1, (m,), generator=generator).to(device)
            signs = (torch.randint(0, 2, (m, c, 1, 1), generator=generator) * 2 - 1).to(device, x.dtype)
            inside_h = (rows_h[None] >= top[:, None]) & (rows_h[None] < top[:, None] + side)
            inside_w = (rows_w[None] >= left[:, None]) & (rows_w[None] < left[:, None] + side)
            window = (inside_h[:, :, None] & inside_w[:, None, :])[:, None]  # [m, 1, H, W]
            x_act = x[active]
            delta = torch.where(window, self.eps * signs, x_best[active] - x_act)
            candidate = torch.clamp(x_act + delta, 0, 1)
            value = objective(candidate, index[active])
            improved = value.loss.float() > loss_best[active]
            rows = active[improved]
            x_best[rows] = candidate[improved]
            loss_best[rows] = value.loss.float()[improved]
            if fooled is not None:
                fooled[rows] = value.fooled[improved]
            history.append(float(loss_best.mean()))
        x_out, loss, fooled = select_over_restarts(x_best, loss_best, fooled, r)
        return AttackResult(x_out, loss, fooled, history={"loss": history})
