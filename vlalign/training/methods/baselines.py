"""Baselines of contrastive-PO Table 1 as methods of the one loop: Materzynska et al. and Defense-Prefix.

(Cross-entropy fine-tuning is the ``ce`` objective of :mod:`vlalign.training.methods.preference`; PAINT, which
interpolates weights rather than training, is :mod:`vlalign.training.paint`.)

- Materzynska et al. (2022): a learned linear projection W of both embeddings, trained so typographic images
  match their true class, with the orthogonality penalty ‖WᵀW − I‖_F that keeps pretrained similarities.
- Defense-Prefix (Azuma & Matsui 2023): one learned token inserted before the class name in every prompt,
  trained with cross-entropy on typographic images (defense loss) and a KL term keeping the clean-image policy of
  the prefixed prompts equal to the plain prompts' (identity loss); the image tower is untouched.

Both train on frozen image features, computed once before the loop.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vlalign.config import check_range
from vlalign.data.datasets import IndexView, TensorImageDataset, collate_for
from vlalign.data.preference import PreferenceSet, RegularizationSet
from vlalign.losses.preference import kl_divergence
from vlalign.models.base import ContrastiveModel
from vlalign.models.heads import HeadedCLIP, LinearHead
from vlalign.models.mini_clip import MiniCLIP
from vlalign.models.prompt_prefix import DefensePrefixCLIP
from vlalign.models.vocabulary import check_known_words
from vlalign.training.frozen import precompute
from vlalign.training.loop import fit
from vlalign.training.method import Method, Stream
from vlalign.training.train_config import TrainConfig


def orthogonality_penalty(weight: torch.Tensor) -> torch.Tensor:
    """R(W) = ‖WᵀW − I‖_F."""
    return torch.linalg.matrix_norm(weight.t() @ weight - torch.eye(weight.shape[0], device=weight.device, dtype=weight.dtype))


class _FeatureMethod(Method):
    """Shared by both baselines: typographic images (``chosen`` = true class) and optional labelled clean images,
    read as cached features by index."""

    def __init__(self, model: ContrastiveModel, pref: Dataset, prompts: tuple[str, ...], reg: Dataset | None) -> None:
        super().__init__()
        self.base = model.eval()
        for param in self.base.parameters():
            param.requires_grad_(False)
        self.pref_data, self.reg_data, self.prompts = pref, reg, tuple(prompts)
        self.frozen: dict[str, torch.Tensor] = {}

    def streams(self) -> dict[str, Stream]:
        # Cached features are read by index; the views keep the data's own fingerprint in the run's config.
        streams = {"pref": Stream(IndexView(self.pref_data))}
        if self.reg_data is not None:
            streams["reg"] = Stream(IndexView(self.reg_data))
        return streams

    def prepare(self, device: torch.device) -> None:
        self.to(device)
        base = self.base
        encode = lambda b: base.encode_image(b["pixels"].to(device).float().div_(255.0))  # noqa: E731
        check_known_words(base, self.prompts, "prompts")
        frozen = {"scale": base.logit_scale.detach(), "text": base.encode_text(list(self.prompts)).detach()}
        frozen["pref_features"] = precompute(self.pref_data, encode, collate_for(self.pref_data)).to(device)
        frozen["pref_label"] = precompute(self.pref_data, lambda b: torch.as_tensor(b["chosen"]),
                                          collate_for(self.pref_data)).to(device)
        if self.reg_data is not None:
            frozen["reg_features"] = precompute(self.reg_data, encode, collate_for(self.reg_data)).to(device)
            if "label" in (self.reg_data[0] or {}):
                frozen["reg_label"] = precompute(self.reg_data, lambda b: torch.as_tensor(b["label"]),
                                                 collate_for(self.reg_data)).to(device)
        self.frozen = frozen


class MaterzynskaProjection(_FeatureMethod):
    """Loss: CE toward the true class on typographic features + CE on labelled clean features (when given) +
    ``orthogonality`` · ‖WᵀW − I‖_F, with W applied to both embeddings."""

    default_train = {"optimizer": "adamax", "lr": 2e-3, "weight_decay": 0.0}

    def __init__(self, model: ContrastiveModel, pref: Dataset, prompts: tuple[str, ...], reg: Dataset | None,
                 orthogonality: float = 1.0) -> None:
        super().__init__(model, pref, prompts, reg)
        check_range("orthogonality", orthogonality, 0)
        self.orthogonality = orthogonality
        self.config = {"orthogonality": orthogonality}
        self.head = LinearHead(model.embed_dim).to(next(model.parameters()))

    def trainable_module(self) -> nn.Module:
        return self.head

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        f, scale = self.frozen, self.frozen["scale"]
        class_emb = self.head(f["text"])
        idx = batch["pref"]["index"]
        loss_typo = F.cross_entropy(scale * self.head(f["pref_features"][idx]) @ class_emb.t(), f["pref_label"][idx])
        loss_clean = torch.zeros_like(loss_typo)
        if "reg_label" in f:
            ridx = batch["reg"]["index"]
            loss_clean = F.cross_entropy(scale * self.head(f["reg_features"][ridx]) @ class_emb.t(), f["reg_label"][ridx])
        penalty = orthogonality_penalty(self.head.weight)
        return {"loss": loss_typo + loss_clean + self.orthogonality * penalty, "loss_typographic": loss_typo,
                "loss_clean": loss_clean, "orthogonality": penalty}

    def finish(self) -> HeadedCLIP:
        self.head.weight.requires_grad_(False)
        return HeadedCLIP(self.base, self.head).eval()


class DefensePrefixTraining(_FeatureMethod):
    """Loss: CE toward the true class of typographic features against the prefixed prompts + ``identity_weight``
    · KL(clean-image policy over prefixed prompts ‖ over plain prompts)."""

    default_train = {"optimizer": "adamax", "lr": 5e-3, "weight_decay": 0.0}

    def __init__(self, model: MiniCLIP, pref: Dataset, prompts: tuple[str, ...], reg: Dataset | None,
                 identity_weight: float = 1.0) -> None:
        super().__init__(model, pref, prompts, reg)
        check_range("identity_weight", identity_weight, 0)
        self.identity_weight = identity_weight
        self.config = {"identity_weight": identity_weight}
        self.prefixed = DefensePrefixCLIP(model)

    def prepare(self, device: torch.device) -> None:
        super().prepare(device)
        self.tokens = {k: v.to(device) for k, v in self.prefixed.tokenize(list(self.prompts)).items()}

    def trainable_module(self) -> nn.Module:
        return self.prefixed

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        f, scale = self.frozen, self.frozen["scale"]
        prompts = self.prefixed.encode_tokens(self.tokens)
        idx = batch["pref"]["index"]
        loss_defense = F.cross_entropy(scale * f["pref_features"][idx] @ prompts.t(), f["pref_label"][idx])
        loss_identity = torch.zeros_like(loss_defense)
        if "reg_features" in f and self.identity_weight > 0:
            clean = f["reg_features"][batch["reg"]["index"]]
            loss_identity = kl_divergence(scale * clean @ prompts.t(), scale * clean @ f["text"].t()).mean()
        return {"loss": loss_defense + self.identity_weight * loss_identity, "loss_defense": loss_defense,
                "loss_identity": loss_identity}

    def finish(self) -> DefensePrefixCLIP:
        self.prefixed.prefix.requires_grad_(False)
        return self.prefixed.eval()


def _datasets(pref: PreferenceSet, reg: RegularizationSet | None) -> tuple[Dataset, Dataset | None]:
    pref_data = TensorImageDataset(pref.images, chosen=pref.chosen, rejected=pref.rejected)
    if reg is None:
        return pref_data, None
    return pref_data, TensorImageDataset(reg.images, **({"label": reg.labels} if reg.labels is not None else {}))


def train_materzynska(model: ContrastiveModel, pref: PreferenceSet, reg: RegularizationSet | None,
                      train: TrainConfig | None = None, orthogonality: float = 1.0, progress: bool = False) -> HeadedCLIP:
    """Learn the Materzynska et al. projection on ``model``'s frozen features (default: 300 steps of batch 128)."""
    method = MaterzynskaProjection(model, *_materzynska_args(pref, reg), orthogonality=orthogonality)
    return fit(method, train or TrainConfig(steps=300, batch_size=128), progress=progress).model


def _materzynska_args(pref: PreferenceSet, reg: RegularizationSet | None) -> tuple:
    pref_data, reg_data = _datasets(pref, reg if reg is not None and reg.labels is not None else None)
    return pref_data, pref.prompts, reg_data


def train_defense_prefix(model: MiniCLIP, pref: PreferenceSet, reg: RegularizationSet | None,
                         train: TrainConfig | None = None, identity_weight: float = 1.0,
                         progress: bool = False) -> DefensePrefixCLIP:
    """Learn the Defense-Prefix token for ``model`` (default: 300 steps of batch 128)."""
    pref_data, reg_data = _datasets(pref, reg)
    method = DefensePrefixTraining(model, pref_data, pref.prompts, reg_data, identity_weight)
    return fit(method, train or TrainConfig(steps=300, batch_size=128), progress=progress).model
