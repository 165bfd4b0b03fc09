"""Auto-PGD: step-size-free PGD with momentum, and its targeted DLR variant (the white-box half of AutoAttack).

Paper: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (Algorithm 1; losses eq. (5), (6)).

Threat model: ‖x_adv − x‖∞ ≤ ε (default) or ‖·‖₂ ≤ ε, x_adv ∈ [0, 1]. Defaults: 100 iterations as in the
paper (robust-eval passes ``--steps``), initial step η = 2ε, momentum α = 0.75, ρ = 0.75, a random start,
1 restart (restarts are batched). The step size halves at the checkpoints w_j (see :func:`apgd_checkpoints`)
when the loss rose in fewer than ρ of the steps since the last checkpoint (condition 1) or when neither the
step size nor the best loss changed since then (condition 2); the next step then restarts from the best point.
Each iteration costs one forward and one backward pass; the last point gets a forward pass only.

- ``APGD(loss="ce")`` — APGD-CE; ``APGD(loss="dlr")`` — APGD-DLR (scale-invariant, immune to softmax
  saturation); ``loss=None`` maximizes the objective's own loss (embeddings, caption likelihood).
- :class:`APGDTargeted` — APGD-T: targeted DLR towards each of the ``n_target_classes`` classes ranked
  highest after the true one on the clean image, attacking only the samples still correctly classified.
"""

from __future__ import annotations

import torch

from vlalign.attacks.base import Attack, AttackResult, BestTracker, Objective, select_over_restarts
from vlalign.attacks.threat_model import ascent_direction, check_counts, project, random_start
from vlalign.attacks.objectives import LogitObjective

#: The targeted form of each untargeted loss APGD can swap in, for objectives whose success is reaching a target.
TARGETED_FORM = {"ce": "ce-targeted", "dlr": "dlr-targeted", "ce-targeted": "ce-targeted",
                 "dlr-targeted": "dlr-targeted"}


def apgd_checkpoints(steps: int) -> list[int]:
    """The paper's checkpoints w_0 = 0 < w_1 < … ≤ ``steps``.

    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), w_j = ⌈p_j · N_iter⌉ for p_j ≤ 1.
    Computed in hundredths so the arithmetic is exact (0.22 + 0.19 is not 0.41 in floating point).
    """
    check_counts(steps=steps)
    out = [0]
    previous, current = 0, 22
    while current <= 100:
        w = -(-current * steps // 100)
        if w > out[-1]:
            out.append(w)
        previous, current = current, current + max(current - previous - 3, 6)
    return out


def _rows(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


class APGD(Attack):
    """APGD with the CE or DLR loss (or the objective's own loss)."""

    def __init__(self, eps: float, norm: str = "linf", steps: int = 100, loss: str | None = "ce",
                 restarts: int = 1, random_start: bool = True, rho: float = 0.75, momentum: float = 0.75) -> None:
        super().__init__(eps, norm)
        check_counts(steps=steps, restarts=restarts)
        if not 0 < rho <= 1 or not 0 < momentum <= 1:
            raise ValueError(f"rho and momentum must be in (0, 1], got {rho}, {momentum}")
        self.steps = steps
        self.loss = loss
        self.restarts = restarts
        self.random_start = random_start
        self.rho = rho
        self.momentum = momentum

    def _objective(self, objective: Objective) -> Objective:
        if self.loss is None:
            return objective
        if not isinstance(objective, LogitObjective) and self.loss == getattr(objective, "native_loss", None):
            return objective  # the objective's own loss is this one (a generative VLM's response cross-entropy)
        if not isinstance(objective, LogitObjective):
            raise TypeError(f"APGD with loss {self.loss!r} needs a logit objective (zero-shot or retrieval), got "
                            f"{type(objective).__name__}; use loss=None to maximize that objective's own loss")
        if objective.success == "targeted":
            # A targeted objective keeps its target: CE / DLR become their targeted forms (the untargeted ones would
            # push away from the label while success is still counted as reaching the target).
            if self.loss not in TARGETED_FORM:
                raise ValueError(f"APGD loss {self.loss!r} has no targeted form, and the objective is targeted; use "
                                 f"loss='ce' or 'dlr' (their targeted forms are used) or loss=None")
            return objective.with_loss(TARGETED_FORM[self.loss])
        return objective.with_loss(self.loss)

    def run(self, objective: Objective, images: torch.Tensor, generator: torch.Generator) -> AttackResult:
        objective = self._objective(objective)
        b, r = images.shape[0], self.restarts
        x = images.repeat(r, 1, 1, 1)
        index = torch.arange(b, device=images.device).repeat(r)
        start = random_start(x, self.eps, self.norm, generator) if self.random_start else x.clone()
        return self.iterate(objective, x, index, start, r)

    def _evaluate(self, objective: Objective, x_adv: torch.Tensor, index: torch.Tensor, need_grad: bool):
        if not need_grad:
            with torch.no_grad():
                value = objective(x_adv, index)
            return value.loss.detach().float(), None, value.fooled
        x_adv = x_adv.detach().requires_grad_(True)
        value = objective(x_adv, index)
        grad, = torch.autograd.grad(value.loss.sum(), x_adv)
        return value.loss.detach().float(), grad, value.fooled

    def iterate(self, objective: Objective, x: torch.Tensor, index: torch.Tensor, start: torch.Tensor,
                restarts: int = 1) -> AttackResult:
        """Algorithm 1 from ``start``; rows of ``x`` map to the objective's samples through ``index``."""
        checkpoints = set(apgd_checkpoints(self.steps))
        rows = x.shape[0]
        device = x.device
        x_cur = start.detach()
        f_cur, g_cur, fooled = self._evaluate(objective, x_cur, index, need_grad=True)
        out = BestTracker(x_cur)
        out.update(x_cur, f_cur, fooled)
        x_max, f_max, g_max = x_cur.clone(), f_cur.clone(), g_cur.clone()
        x_prev = x_cur
        eta = torch.full((rows,), 2.0 * self.eps, device=device)
        count = torch.zeros(rows, device=device)
        reduced_last = torch.zeros(rows, dtype=torch.bool, device=device)
        f_max_last = f_max.clone()
        last_checkpoint = 0
        step_sizes, losses = [], [f_cur.mean()]  # kept on the device; one sync at the end
        for k in range(self.steps):
            # x^{k+1} from x^k: plain step at k = 0, momentum after (Algorithm 1, lines 3 and 6-7).
            alpha = 1.0 if k == 0 else self.momentum
            z = project(x_cur + _rows(eta, x) * ascent_direction(g_cur, self.norm), x, self.eps, self.norm)
            x_next = project(x_cur + alpha * (z - x_cur) + (1 - alpha) * (x_cur - x_prev), x, self.eps, self.norm)
            step_sizes.append(eta.clone())
            f_next, g_next, fooled = self._evaluate(objective, x_next, index, need_grad=k + 1 < self.steps)
            losses.append(f_next.mean())
            increased = f_next > f_cur
            out.update(x_next, f_next, fooled)
            better = f_next > f_max
            x_max, f_max = torch.where(_rows(better, x), x_next, x_max), torch.where(better, f_next, f_max)
            if g_next is not None:
                g_max = torch.where(_rows(better, x), g_next, g_max)
            x_prev, x_cur, f_cur, g_cur = x_cur, x_next, f_next, g_next
            if k in checkpoints:
                if k > 0:
                    # Condition 1: the loss rose in fewer than ρ·(w_j − w_{j−1}) of the steps of this interval.
                    cond1 = count < self.rho * (k - last_checkpoint)
                    # Condition 2: step size not reduced at the last checkpoint, and no better point found since.
                    cond2 = ~reduced_last & (f_max <= f_max_last)
                    reduce = cond1 | cond2
                    eta = torch.where(reduce, eta / 2, eta)
                    if g_cur is not None:
                        # Restart from the best point (x^{k+1} <- x_max) with its gradient, without momentum.
                        back = _rows(reduce, x)
                        x_cur, x_prev = torch.where(back, x_max, x_cur), torch.where(back, x_max, x_prev)
                        g_cur, f_cur = torch.where(back, g_max, g_cur), torch.where(reduce, f_max, f_cur)
                    reduced_last = reduce
                f_max_last = f_max.clone()
                last_checkpoint = k
                count = torch.zeros_like(count)
            # Comparison f(x^{k+1}) > f(x^k) belongs to the interval starting at this iteration.
            count += increased.float()
        fooled_out = out.fooled if fooled is not None else None
        x_out, loss, fooled_out = select_over_restarts(out.x, out.loss, fooled_out, restarts)
        history = {"loss": torch.stack(losses).tolist(), "step_size": list(torch.stack(step_sizes).cpu())}
        return AttackResult(x_out, loss, fooled_out, history=history)


class APGDTargeted(Attack):
    """APGD-T: targeted DLR towards the top-ranked wrong classes in turn, on the samples still unfooled."""

    def __init__(self, eps: float, norm: str = "linf", steps: int = 100, n_target_classes: int = 9,
                 restarts: int = 1) -> None:
        super().__init__(eps, norm)
        check_counts(n_target_classes=n_target_classes)
        self.inner = APGD(eps, norm=norm, steps=steps, loss=None, restarts=restarts)
        self.n_target_classes = n_target_classes

    def run(self, objective: Objective, images: torch.Tensor, generator: torch.Generator) -> AttackResult:
        if not isinstance(objective, LogitObjective):
            raise TypeError(f"APGD-T needs a logit objective (zero-shot or retrieval), got {type(objective).__name__}")
        n = images.shape[0]
        with torch.no_grad():
            ranking = objective.scores(images, torch.arange(n, device=images.device)).argsort(1, descending=True)
        n_targets = min(self.n_target_classes, ranking.shape[1] - 1)
        adversarial = images.clone()
        fooled = torch.zeros(n, dtype=torch.bool, device=images.device)
        loss = torch.full((n,), float("nan"), device=images.device)
        for t in range(n_targets):
            active = (~fooled).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            # The (t+1)-th best class other than the true one: skip the label wherever it sits in the ranking.
            labels = objective.labels
            ranked = ranking[active]
            not_label = ranked != labels[active, None]
            others = ranked[not_label].view(active.numel(), -1)
            targets = labels.clone()
            targets[active] = others[:, t]
            targeted = objective.with_loss("dlr-targeted", targets, success="untargeted").subset(active)
            result = self.inner.run(targeted, images[active], generator)
            take = result.fooled | (t == 0)
            adversarial[active[take]] = result.adversarial[take]
            loss[active[take]] = result.loss[take]
            fooled[active] = result.fooled
        return AttackResult(adversarial, loss, fooled)
