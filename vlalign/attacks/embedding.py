"""Embedding-space attack: push the image embedding away from the clean reference, without labels.

Paper: Schlarmann, Singh, Croce, Hein, "Robust CLIP: Unsupervised Adversarial Fine-Tuning of Vision
Embeddings for Robust Large Vision-Language Models" (FARE), ICML 2024, eq. (3); AdPO uses the same inner
maximization. Maximizes ‖φ(x + δ) − φ_ref(x)‖₂² (squared: same maximizer, smooth everywhere) with PGD.

Threat model: ‖δ‖∞ ≤ ε (default) or ‖δ‖₂ ≤ ε, x + δ ∈ [0, 1]. Defaults: 10 steps, α = ε/4 (FARE's 1/255 at
ε = 4/255), random start (the gradient of the squared distance vanishes at δ = 0), final iterate. φ_ref is
the attacked model itself unless ``reference_model`` is given (FARE's frozen original encoder). Given a
classification objective, it crafts on the embedding distance and scores the result on that objective; given
an :class:`EmbeddingObjective`, it attacks it directly. On a generative VLM the embedding is the flattened patch
features its decoder reads (:meth:`GenerativeVLM.encode_image`), and the result is scored on the VLM objective.
"""

from __future__ import annotations

import torch

from vlalign.attacks.base import Attack, AttackResult, Objective
from vlalign.attacks.objectives import EmbeddingObjective
from vlalign.attacks.pgd import PGD
from vlalign.models.base import ContrastiveModel
from vlalign.models.vlm import GenerativeVLM


class EmbeddingAttack(Attack):
    """Label-free PGD on the embedding distance to the clean reference."""

    def __init__(self, eps: float, norm: str = "linf", steps: int = 10, step_size: float | None = None,
                 restarts: int = 1, reference_model: ContrastiveModel | GenerativeVLM | None = None,
                 normalize: bool = False) -> None:
        super().__init__(eps, norm)
        self.pgd = PGD(eps, norm=norm, steps=steps, step_size=step_size if step_size is not None else eps / 4,
                       random_start=True, restarts=restarts, keep="last")
        self.reference_model = reference_model
        self.normalize = normalize

    def run(self, objective: Objective, images: torch.Tensor, generator: torch.Generator) -> AttackResult:
        if isinstance(objective, EmbeddingObjective):
            return self.pgd.run(objective, images, generator)
        model = objective.model
        if not isinstance(model, (ContrastiveModel, GenerativeVLM)):
            raise TypeError(f"the embedding attack needs an image encoder; {type(objective).__name__}.model is "
                            f"{type(model).__name__}, not a ContrastiveModel or GenerativeVLM")
        embedding = EmbeddingObjective.from_images(model, images, self.reference_model, self.normalize)
        result = self.pgd.run(embedding, images, generator)
        with torch.no_grad():
            value = objective(result.adversarial)
        return AttackResult(result.adversarial, value.loss.float(), value.fooled, history=result.history)
