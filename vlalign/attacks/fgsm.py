"""Fast gradient sign method.

Paper: Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.

Threat model: ‖x_adv − x‖∞ ≤ ε, x_adv ∈ [0, 1]. One step x + ε·sign(∇ₓL(x)): one forward and one backward
pass. A weak attack, useful as a sanity floor: any serious attack must do at least as well, and FGSM beating
PGD is a classic sign of gradient masking.
"""

from __future__ import annotations

import torch

from vlalign.attacks.base import Attack, AttackResult, Objective
from vlalign.attacks.threat_model import project


class FGSM(Attack):
    """Single-step ℓ∞ attack of size ε."""

    norm = "linf"

    def __init__(self, eps: float) -> None:
        super().__init__(eps)

    def run(self, objective: Objective, images: torch.Tensor, generator: torch.Generator) -> AttackResult:
        x = images.clone().requires_grad_(True)
        value = objective(x)
        grad, = torch.autograd.grad(value.loss.sum(), x)
        adversarial = project(images + self.eps * grad.sign(), images, self.eps, "linf")
        return AttackResult(adversarial, history={"loss": [float(value.loss.detach().mean())]})
