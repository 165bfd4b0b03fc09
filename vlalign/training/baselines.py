"""Baselines of contrastive-PO Table 1 in the same harness: PAINT, Materzynska et al., Defense-Prefix.

(Cross-entropy fine-tuning is the ``ce`` method of :mod:`vlalign.training.contrastive_po`.)

- PAINT (Ilharco et al. 2022): fine-tune, then interpolate θ_α = (1−α)θ₀ + αθ₁ and pick α on validation data.
- Materzynska et al. (2022): a learned linear projection W of both embeddings, trained so typographic images
  match their true class, with the orthogonality penalty ‖WᵀW − I‖_F that keeps pretrained similarities.
- Defense-Prefix (Azuma & Matsui 2023): one learned token inserted before the class name in every prompt,
  trained with cross-entropy on typographic images (defense loss) and a KL term keeping the clean-image policy of
  the prefixed prompts equal to the plain prompts' (identity loss); the image tower is untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vlalign.data.preference import PreferenceSet, RegularizationSet
from vlalign.models.embeddings import image_embeddings
from vlalign.losses.preference import kl_divergence
from vlalign.models.base import ContrastiveModel
from vlalign.models.heads import HeadedCLIP, LinearHead
from vlalign.models.mini_clip import MiniCLIP
from vlalign.training.metrics_log import check_finite
from vlalign.training.schedule import warmup_cosine


# ----------------------------------------------------------------------------------------------------- PAINT
def interpolate_state(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 − α)·start + α·end for every floating-point tensor (others are taken from ``end``)."""
    if set(start) != set(end):
        raise ValueError("cannot interpolate state dicts with different keys")
    return {k: torch.lerp(start[k], end[k], alpha) if start[k].is_floating_point() else end[k] for k in start}


@dataclass
class PaintResult:
    model: ContrastiveModel
    alpha: float
    scores: dict[float, float]


@torch.no_grad()
def paint(zero_shot: ContrastiveModel, finetuned: ContrastiveModel, alphas: Sequence[float],
          validate: Callable[[ContrastiveModel], float]) -> PaintResult:
    """Interpolate the image towers of ``zero_shot`` and ``finetuned`` and keep the α that ``validate`` scores best."""
    if not alphas:
        raise ValueError("need at least one interpolation coefficient")
    start = {k: v.detach().clone() for k, v in zero_shot.image_encoder.state_dict().items()}
    end = {k: v.detach().clone() for k, v in finetuned.image_encoder.state_dict().items()}
    model = copy.deepcopy(finetuned)
    scores = {}
    for alpha in alphas:
        model.image_encoder.load_state_dict(interpolate_state(start, end, float(alpha)))
        scores[float(alpha)] = float(validate(model))
    best = max(scores, key=lambda a: (scores[a], -abs(a - 0.5)))
    model.image_encoder.load_state_dict(interpolate_state(start, end, best))
    return PaintResult(model.eval(), best, scores)


# ------------------------------------------------------------------------------------------------ Materzynska
def orthogonality_penalty(weight: torch.Tensor) -> torch.Tensor:
    """R(W) = ‖WᵀW − I‖_F."""
    return torch.linalg.matrix_norm(weight.t() @ weight - torch.eye(weight.shape[0], device=weight.device, dtype=weight.dtype))


def train_materzynska(model: ContrastiveModel, pref: PreferenceSet, reg: RegularizationSet | None, steps: int = 300,
                      batch_size: int = 128, lr: float = 2e-3, orthogonality: float = 1.0, seed: int = 0,
                      progress: bool = False) -> HeadedCLIP:
    """Learn a projection W (on frozen, cached features) with CE toward the true class on typographic images,
    CE on labelled clean images when given, and the orthogonality penalty weighted by ``orthogonality``."""
    torch.manual_seed(seed)
    with torch.no_grad():
        text = model.encode_text(list(pref.prompts)).float().cpu()
        feats = image_embeddings(model, pref.images)
        clean = image_embeddings(model, reg.images) if reg is not None and reg.labels is not None else None
        scale = float(model.logit_scale)
    head = LinearHead(model.embed_dim)
    optimizer = torch.optim.Adamax(head.parameters(), lr=lr)
    scheduler = warmup_cosine(optimizer, steps, 0.1)
    generator = torch.Generator().manual_seed(seed)
    for step in tqdm(range(steps), desc="materzynska", disable=not progress):
        idx = torch.randint(0, len(pref), (batch_size,), generator=generator)
        class_emb = head(text)
        loss = F.cross_entropy(scale * head(feats[idx]) @ class_emb.t(), pref.chosen[idx])
        if clean is not None:
            cidx = torch.randint(0, clean.shape[0], (batch_size,), generator=generator)
            loss = loss + F.cross_entropy(scale * head(clean[cidx]) @ class_emb.t(), reg.labels[cidx])
        loss = loss + orthogonality * orthogonality_penalty(head.weight)
        check_finite(float(loss.detach()), step, "materzynska")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    head.weight.requires_grad_(False)
    return HeadedCLIP(model, head.to(model.device)).eval()


# --------------------------------------------------------------------------------------------- Defense-Prefix
class DefensePrefixCLIP(ContrastiveModel):
    """A MiniCLIP whose prompts get one learned token embedding inserted before their last word (the class name in
    ``"a photo of a {}"`` prompts). Images are encoded by the unchanged base model."""

    def __init__(self, base: MiniCLIP, prefix: torch.Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(base, MiniCLIP):
            raise ValueError("Defense-Prefix needs a text tower that accepts token embeddings; "
                             f"it is implemented for MiniCLIP, got {type(base).__name__}")
        self.base = base
        width = base.text.token_embedding.weight.shape[1]
        init = base.text.token_embedding.weight.detach().mean(0) if prefix is None else prefix
        self.prefix = torch.nn.Parameter(init.clone().reshape(width))
        self.image_size, self.embed_dim = base.image_size, base.embed_dim

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.base.encode_image(pixels, normalize)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.base.tokenize(texts)

    def encode_tokens(self, tokens: dict[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        lengths = mask.sum(1)
        if int(lengths.max()) >= ids.shape[1]:
            raise ValueError("prompt too long to insert the Defense-Prefix token; shorten it")
        embedding = self.base.text.token_embedding
        rows = []
        for i in range(ids.shape[0]):
            n = int(lengths[i])  # <bos> w1 … wk <eos>; the class word is wk at n - 2
            emb = embedding(ids[i, :n])
            pad = embedding(ids[i, n:ids.shape[1] - 1])
            rows.append(torch.cat([emb[: n - 2], self.prefix[None], emb[n - 2:], pad]))
        new_mask = torch.zeros_like(mask)
        new_mask[torch.arange(ids.shape[1], device=ids.device)[None] < (lengths + 1)[:, None]] = 1
        features = self.base.text(ids, new_mask, torch.stack(rows))
        return F.normalize(features, dim=-1) if normalize else features

    @property
    def image_encoder(self) -> torch.nn.Module:
        return self.base.image_encoder

    @property
    def text_encoder(self) -> torch.nn.Module:
        return self.base.text_encoder

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.base.logit_scale


def train_defense_prefix(model: MiniCLIP, pref: PreferenceSet, reg: RegularizationSet | None, steps: int = 300,
                         batch_size: int = 128, lr: float = 5e-3, identity_weight: float = 1.0, seed: int = 0,
                         progress: bool = False) -> DefensePrefixCLIP:
    """Learn the DP token: CE toward the true class on typographic images + ``identity_weight`` · KL between the
    clean-image policies of prefixed and plain prompts. Image features are frozen and cached."""
    torch.manual_seed(seed)
    model = model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    dp = DefensePrefixCLIP(model)
    with torch.no_grad():
        feats = image_embeddings(model, pref.images)
        clean = image_embeddings(model, reg.images) if reg is not None else None
        plain = model.encode_text(list(pref.prompts)).float().cpu()
        scale = float(model.logit_scale)
    tokens = {k: v.to(model.device) for k, v in dp.tokenize(list(pref.prompts)).items()}
    optimizer = torch.optim.Adamax([dp.prefix], lr=lr)
    scheduler = warmup_cosine(optimizer, steps, 0.1)
    generator = torch.Generator().manual_seed(seed)
    for step in tqdm(range(steps), desc="defense-prefix", disable=not progress):
        idx = torch.randint(0, len(pref), (batch_size,), generator=generator)
        prefixed = dp.encode_tokens(tokens).float().cpu()
        loss = F.cross_entropy(scale * feats[idx] @ prefixed.t(), pref.chosen[idx])
        if clean is not None and identity_weight > 0:
            cidx = torch.randint(0, clean.shape[0], (batch_size,), generator=generator)
            loss = loss + identity_weight * kl_divergence(scale * clean[cidx] @ prefixed.t(), scale * clean[cidx] @ plain.t()).mean()
        check_finite(float(loss.detach()), step, "defense-prefix")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    dp.prefix.requires_grad_(False)
    return dp.eval()
