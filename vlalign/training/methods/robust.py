"""Robust fine-tuning of the image tower: TeCoA and FARE as methods of the one loop.

- TeCoA (Mao et al., "Understanding Zero-Shot Adversarial Robustness for Large-Scale Models", ICLR 2023):
  supervised adversarial training on the zero-shot logits, min_θ E[max_δ CE(s·φ_θ(x+δ)ᵀT, y)] with the class
  prompt embeddings T frozen.
- FARE (Schlarmann et al., "Robust CLIP", ICML 2024, eq. 3): unsupervised, min_θ E[max_δ ‖φ_θ(x+δ) − φ_orig(x)‖₂²]
  with φ_orig the frozen original encoder; no labels, so the embedding stays compatible with the text tower.

Both use ℓ∞ PGD-10 with a random start, step ε/4, and the final iterate, as the papers do (ε = 2/255 or 4/255),
train only the image tower, and keep the text tower and temperature frozen. The class-prompt embeddings and
FARE's reference embeddings φ_orig(x) of every training image are computed once, before the loop, in fixed
batches (by the model before any update, so no second model is kept). Each image's random attack start depends on
(seed, step, image index) alone, so resumed and data-parallel runs attack exactly as an uninterrupted one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vlalign.attacks.objectives import EmbeddingObjective, LogitObjective
from vlalign.attacks.pgd import PGD
from vlalign.attacks.threat_model import LinfTrainingAttack, parse_eps
from vlalign.config import NumberText, check_range, option
from vlalign.data.datasets import collate_for
from vlalign.models.base import ContrastiveModel
from vlalign.models.embeddings import class_text_embeddings, template_problem
from vlalign.training.frozen import precompute
from vlalign.training.method import Method, Stream
from vlalign.training.sampling import item_seeds


def tecoa_loss(image_embeddings: torch.Tensor, class_embeddings: torch.Tensor, labels: torch.Tensor,
               logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Mean CE of zero-shot logits ``s · Iᵀ T`` on (adversarial) normalized image embeddings (TeCoA)."""
    return F.cross_entropy(logit_scale * image_embeddings @ class_embeddings.t(), labels)


def fare_loss(embeddings: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ‖φ(x_adv) − φ_orig(x)‖₂² (FARE, eq. 3)."""
    if embeddings.shape != reference.shape:
        raise ValueError(f"embeddings {tuple(embeddings.shape)} and reference {tuple(reference.shape)} differ in shape")
    return (embeddings - reference).pow(2).sum(1).mean()


@dataclass
class RobustConfig(LinfTrainingAttack):
    """The robust fine-tuning objective and its training attack."""

    method: Literal["tecoa", "fare"] = option("tecoa", "tecoa: adversarial CE on zero-shot logits; fare: "
                                                       "unsupervised embedding-space adversarial training")
    eps: NumberText = option("4/255", "ℓ∞ radius of the training attack on [0, 1] images, e.g. 4/255")
    attack_steps: int = option(10, "PGD iterations of the training attack (PGD-10 in both papers)")
    attack_step_size: NumberText | None = option(None, "PGD step size (null: ε/4, 1/255 at ε = 4/255 as in both "
                                                       "papers)")
    templates: list[str] = option(help="prompt templates of TeCoA's class embeddings",
                                  factory=lambda: ["a photo of a {}"])

    def __post_init__(self) -> None:
        parse_eps(self.eps)
        if self.attack_step_size is not None:
            parse_eps(self.attack_step_size)
        check_range("attack_steps", self.attack_steps, 1)
        if not self.templates:
            raise ValueError("templates must be a non-empty list of prompt templates, got []")
        for i, template in enumerate(self.templates):
            problem = template_problem(template)
            if problem is not None:
                raise ValueError(f"templates[{i}] {problem}")


class RobustFinetune(Method):
    """TeCoA or FARE on ``model``'s image tower (a copy; ``model`` is not modified). ``data`` items hold
    ``pixels`` and, for TeCoA, ``label`` (indices into ``classnames``)."""

    default_train = {"optimizer": "adamw", "lr": 3e-4, "betas": (0.9, 0.98), "weight_decay": 1e-4}

    def __init__(self, model: ContrastiveModel, data: Dataset, classnames: tuple[str, ...] | list[str],
                 config: RobustConfig) -> None:
        super().__init__()
        self.config, self.data, self.classnames = config, data, tuple(classnames)
        self.model = copy.deepcopy(model).eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        for param in self.model.image_encoder.parameters():
            param.requires_grad_(True)
        self.attack = PGD(config.epsilon, norm="linf", steps=config.attack_steps, step_size=config.step_size,
                          random_start=True, keep="last")
        self.frozen: dict[str, torch.Tensor] = {}

    @property
    def label(self) -> str:
        return self.config.method

    def streams(self) -> dict[str, Stream]:
        return {"train": Stream(self.data, collate=collate_for(self.data))}

    def prepare(self, device: torch.device) -> None:
        self.to(device)
        model = self.model
        frozen = {"scale": model.logit_scale.detach()}
        if self.config.method == "tecoa":
            frozen["classes"] = class_text_embeddings(model, self.classnames, self.config.templates)
        else:
            # φ_orig(x) of every training image, by the model before any update.
            frozen["reference"] = precompute(
                self.data, lambda b: model.encode_image(b["pixels"].to(device).float().div_(255.0), normalize=False),
                collate=collate_for(self.data)).to(device)
        self.frozen = frozen

    def trainable_module(self) -> nn.Module:
        return self.model.image_encoder

    def finish(self) -> ContrastiveModel:
        for param in self.model.parameters():
            param.requires_grad_(False)
        return self.model.eval()

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        data = batch["train"]
        x = data["pixels"].float().div_(255.0)
        seeds = item_seeds(batch["seed"], batch["step"], data["index"])
        if self.config.method == "tecoa":
            labels = torch.as_tensor(data["label"], device=x.device)
            objective = LogitObjective(self.model, self.frozen["classes"], labels)
            adversarial = self.attack(objective, x, sample_seeds=seeds).adversarial
            loss = tecoa_loss(self.model.encode_image(adversarial).float(), self.frozen["classes"].float(), labels,
                              self.frozen["scale"].float())
        else:
            reference = self.frozen["reference"][data["index"]]
            objective = EmbeddingObjective(self.model, reference, normalize=False)
            adversarial = self.attack(objective, x, sample_seeds=seeds).adversarial
            loss = fare_loss(self.model.encode_image(adversarial, normalize=False).float(), reference.float())
        return {"loss": loss}
