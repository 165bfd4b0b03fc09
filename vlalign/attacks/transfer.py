"""Transfer attack: craft adversarial images on a surrogate model, evaluate them on the target.

Paper: Papernot, McDaniel, Goodfellow, "Transferability in Machine Learning: from Phenomena to Black-Box
Attacks using Adversarial Samples", 2016; the transfer setting of robust-CLIP evaluations (e.g. from the
pretrained CLIP to a robustly fine-tuned one).

Threat model: that of the inner attack (default ℓ∞ PGD, 10 steps, ε); black-box with respect to the target,
which is queried once, to score the result. The target objective must be able to rebuild itself for the
surrogate (``objective.for_model(surrogate)``, as zero-shot and retrieval objectives do: the class prompts are
re-embedded once by the surrogate).
"""

from __future__ import annotations

import torch

from vlalign.attacks.base import Attack, AttackResult, Objective, attack_mode
from vlalign.attacks.pgd import PGD
from vlalign.models.base import ContrastiveModel


class TransferAttack(Attack):
    """Run ``inner`` (default PGD-``steps``) on ``surrogate``; the target only scores the result."""

    white_box = False

    def __init__(self, eps: float, surrogate: ContrastiveModel | str = "mini", steps: int = 10, restarts: int = 1,
                 inner: Attack | None = None) -> None:
        self.inner = inner if inner is not None else PGD(eps, norm="linf", steps=steps, restarts=restarts)
        self.norm = self.inner.norm
        super().__init__(eps)
        if inner is not None and inner.eps != eps:
            raise ValueError(f"the inner attack's eps {inner.eps} differs from the transfer attack's {eps}")
        self._surrogate = surrogate

    @property
    def surrogate(self) -> ContrastiveModel:
        """The surrogate model (a spec such as ``'mini'`` is loaded on first use)."""
        if isinstance(self._surrogate, str):
            from vlalign.models.loading import load_model

            self._surrogate = load_model(self._surrogate)
        return self._surrogate

    def run(self, objective: Objective, images: torch.Tensor, generator: torch.Generator) -> AttackResult:
        for_model = getattr(objective, "for_model", None)
        if for_model is None:
            raise TypeError(f"{type(objective).__name__} cannot be rebuilt for a surrogate model (no for_model)")
        surrogate = self.surrogate.to(images.device)
        surrogate_objective = for_model(surrogate)
        with attack_mode(surrogate):
            crafted = self.inner.run(surrogate_objective, images, generator).adversarial.detach()
        with torch.no_grad():
            value = objective(crafted)
        return AttackResult(crafted, value.loss.float(), value.fooled)
