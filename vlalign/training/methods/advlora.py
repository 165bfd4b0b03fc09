"""AdvLoRA and its comparison points as one training method: contrastive retrieval fine-tuning, clean or
adversarial, of the full image tower, plain LoRA or AdvLoRA (Ji et al. 2024, arXiv 2404.13425).

Loss per step, on a batch of B images each with one of its captions:

- **Symmetric InfoNCE** over the (global) batch's B x B image-caption logits ``s·I(x_i)ᵀT(c_j)`` (CLIP's loss, with
  identical captions counted as positives; :func:`vlalign.losses.contrastive.clip_contrastive_loss`), on the
  adversarial images when ``adversarial`` is on (term ``adversarial``), else on the clean ones (``clean``);
  ``clean_weight`` > 0 adds the clean term to the adversarial one.
- **Adversarial images**: ℓ∞ PGD (``attack_steps`` = 3, ε = ``eps``, random start, last iterate) against the
  batch's captions through the attack suite's :class:`vlalign.attacks.RetrievalObjective`, which maximizes each
  image's image→text cross-entropy ``CE(s·I(x_i + δ)ᵀT, i)`` over the batch's (frozen, detached) caption
  embeddings: the image→text half of the InfoNCE above, per image. The model is in eval mode with frozen
  parameters during the attack (the attack suite's contract) and the loss is then taken on the returned images.
- **Parameter alignment** (AdvLoRA): ``alignment_weight · penalty`` with the penalty of
  :meth:`vlalign.models.adapters.AdvLoRAAdapter.alignment_penalty` (term ``alignment``).

One caption per image per step is drawn from its five, and each image's attack start is drawn, from seeds that
depend on (loop seed, step, image index) alone (:func:`vlalign.training.sampling.item_seeds`, the loop passes
``step`` and ``seed`` in the batch), so resumed and data-parallel runs draw exactly what an uninterrupted one does.
Modes (``trainable``): ``full`` (the whole image tower, optionally
the text tower too), ``lora`` (plain LoRA: peft's init, fixed scale, no penalty) and ``advlora`` (the three
AdvLoRA parts, each switchable for ablation: ``cluster_init``, ``alignment_weight``, ``adaptive_alpha``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from vlalign.attacks.base import eval_mode
from vlalign.attacks.objectives import RetrievalObjective
from vlalign.attacks.pgd import PGD
from vlalign.attacks.threat_model import parse_eps
from vlalign.config import NumberText, check_range, option
from vlalign.data.retrieval_set import collate_retrieval
from vlalign.losses.contrastive import clip_contrastive_loss
from vlalign.models.adapters.advlora import AdapterSpec, AdvLoRAAdapter, apply_advlora, write_peft_adapter
from vlalign.models.base import ContrastiveModel
from vlalign.models.lora import load_named_weights
from vlalign.training import distributed
from vlalign.training.frozen import FROZEN_BATCH
from vlalign.training.method import Method, Stream
from vlalign.training.methods.clip_pretrain import caption_ids
from vlalign.training.sampling import item_seeds

MODES = ("full", "lora", "advlora")
_CAPTION_SALT = 17  # caption draws and attack starts use different seeds of the same (seed, step, index)


@dataclass
class AdvLoRAConfig:
    """An AdvLoRA-family run; every field is checked in ``__post_init__``."""

    #: Null by default and set in ``__post_init__`` from ``trainable`` (see :mod:`vlalign.config`).
    RESOLVED_IN_POST_INIT: ClassVar[tuple[str, ...]] = ("cluster_init", "adaptive_alpha", "alignment_weight")

    trainable: Literal["full", "lora", "advlora"] = option(
        "advlora", "what is trained: full (the image tower), lora (plain LoRA) or advlora")
    rank: int = option(8, "LoRA rank r, also the number of k-means clusters of the clustering init (1..1024)")
    rank_pattern: dict[str, int] = option(help="per-layer ranks overriding rank, by target name (peft's "
                                                "rank_pattern), e.g. {stem.0: 16}; every layer keeps the scaling "
                                                "lora_alpha / rank", factory=dict)
    lora_alpha: float | None = option(None, "peft's lora_alpha, a fixed scaling lora_alpha / r (null: r, scaling 1)")
    image_targets: list[str] | None = option(None, "nn.Linear / nn.Conv2d names to adapt in the image tower "
                                                   "(null: the backend's attention projections)")
    text_targets: list[str] | None = option(help="names to adapt in the text tower (empty: the text tower stays "
                                                 "frozen and its caption embeddings are cached; null: the backend's "
                                                 "default)", factory=list)
    train_text: bool = option(False, "in full mode, fine-tune the text tower too")
    full_parameters: list[str] | None = option(None, "in full mode, train only the image-tower parameters under "
                                                     "these dotted name prefixes, as the tower's named_parameters() "
                                                     "names them, e.g. [stem.0, stem.1] (null: all of them; "
                                                     "train_text still trains the whole text tower)")
    cluster_init: bool | None = option(None, "AdvLoRA part 1, clustering-based initialization (null: on for "
                                             "advlora; must be off otherwise)")
    alignment_weight: float | None = option(None, "AdvLoRA part 2, weight λ of the parameter-alignment penalty "
                                                  "(null: 0.1 for advlora, else 0)")
    alignment_target: Literal["pretrained", "init"] = option(
        "pretrained", "what the adapter product is aligned with: the pre-trained W₀ (the paper) or its initial value")
    adaptive_alpha: bool | None = option(None, "AdvLoRA part 3, a trainable scale α per adapted layer (null: on "
                                               "for advlora; must be off otherwise)")
    alpha_init: float = option(1.0, "initial α (> 0)")
    alpha_lr_scale: float = option(1.0, "α's learning rate as a multiple of the run's (> 0; 1: the factors' rate). "
                                        "Under Adam a scalar moves by about its rate each step, whatever its gradient")
    adversarial: bool = option(True, "train on PGD adversarial images (else on clean images)")
    eps: NumberText = option("2/255", "ℓ∞ radius of the training attack on [0, 1] images, in (0, 1], e.g. 2/255")
    attack_steps: int = option(3, "PGD iterations of the training attack (PGD-3 in the paper), 1..100")
    attack_step_size: NumberText | None = option(None, "PGD step size, e.g. 1/255 (null: 2.5·ε/steps, Madry et "
                                                       "al.'s rule)")
    clean_weight: float = option(0.0, "weight of the clean-image InfoNCE added to the adversarial one (>= 0)")
    kmeans_iterations: int = option(50, "Lloyd iterations of the clustering init (>= 1)")
    seed: int = option(0, "seed of the adapters' init: the clustering init's k-means, plain LoRA's random A (batches, "
                           "captions and attack starts follow the loop's seed)")

    def __post_init__(self) -> None:
        advlora = self.trainable == "advlora"
        self.cluster_init = advlora if self.cluster_init is None else self.cluster_init
        self.adaptive_alpha = advlora if self.adaptive_alpha is None else self.adaptive_alpha
        self.alignment_weight = (0.1 if advlora else 0.0) if self.alignment_weight is None else self.alignment_weight
        if self.trainable not in MODES:
            raise ValueError(f"trainable must be one of {list(MODES)}, got {self.trainable!r}")
        if not advlora and (self.cluster_init or self.adaptive_alpha or self.alignment_weight):
            raise ValueError(f"cluster_init, adaptive_alpha and alignment_weight are AdvLoRA parts; with "
                             f"trainable={self.trainable!r} they must be off, got {self.cluster_init}, "
                             f"{self.adaptive_alpha}, {self.alignment_weight}")
        check_range("rank", self.rank, 1, 1024)
        for name, rank in self.rank_pattern.items():
            check_range(f"rank_pattern[{name}]", rank, 1, 1024)
        if self.lora_alpha is not None:
            check_range("lora_alpha", self.lora_alpha, 0, low_open=True)
        check_range("alignment_weight", self.alignment_weight, 0)
        check_range("alpha_init", self.alpha_init, 0, low_open=True)
        check_range("alpha_lr_scale", self.alpha_lr_scale, 0, low_open=True)
        parse_eps(self.eps)
        if self.attack_step_size is not None:
            parse_eps(self.attack_step_size)
        check_range("attack_steps", self.attack_steps, 1, 100)
        check_range("clean_weight", self.clean_weight, 0)
        check_range("kmeans_iterations", self.kmeans_iterations, 1)
        if self.full_parameters is not None and (self.trainable != "full" or not self.full_parameters):
            raise ValueError(f"full_parameters must be a non-empty list of name prefixes and needs trainable='full', "
                             f"got {self.full_parameters!r} with trainable={self.trainable!r}")
        if self.rank_pattern and self.trainable == "full":
            raise ValueError(f"rank_pattern sets LoRA ranks; with trainable='full' there is no LoRA, got "
                             f"{self.rank_pattern}")
        if self.train_text and self.trainable != "full":
            raise ValueError("train_text applies to trainable='full'; LoRA modes adapt the text tower through text_targets")

    def adapter_spec(self) -> AdapterSpec:
        """The adapter placement and AdvLoRA parts of a LoRA-mode config."""
        return AdapterSpec(rank=self.rank, rank_pattern=dict(self.rank_pattern), lora_alpha=self.lora_alpha,
                           image_targets=self.image_targets, text_targets=self.text_targets,
                           cluster_init=bool(self.cluster_init), adaptive_alpha=bool(self.adaptive_alpha),
                           alpha_init=self.alpha_init,
                           kmeans_iterations=self.kmeans_iterations, seed=self.seed)


def under_prefix(name: str, prefix: str) -> bool:
    """Whether parameter ``name`` lies under ``prefix`` on a dotted boundary: ``stem.1`` and ``stem.1.`` take
    ``stem.1.weight`` but not ``stem.12.weight``; ``pos`` takes ``pos``."""
    stem = prefix.rstrip(".")
    return name == stem or name.startswith(stem + ".")


def train_only(tower: nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Freeze every parameter of ``tower`` that is not under one of ``prefixes`` (:func:`under_prefix`; names as
    ``tower.named_parameters()`` gives them); returns the names left trainable. A prefix that matches no parameter
    is an error (a typo would otherwise train nothing)."""
    names = [name for name, _ in tower.named_parameters()]
    unmatched = [prefix for prefix in prefixes if not any(under_prefix(name, prefix) for name in names)]
    if unmatched:
        raise ValueError(f"full_parameters: {unmatched} match no image-tower parameter; its names look like "
                         f"{names[:4]}")
    kept = []
    for name, param in tower.named_parameters():
        param.requires_grad_(param.requires_grad and any(under_prefix(name, prefix) for prefix in prefixes))
        if param.requires_grad:
            kept.append(name)
    return kept


def sample_captions(seed: int, step: int, indices: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """For each image of the batch, the index of the caption it is paired with at ``step``: uniform over its
    ``counts[b]`` captions, from a generator seeded by (seed, step, image index) alone."""
    if len(counts) != indices.numel():
        raise ValueError(f"got {len(counts)} caption counts for {indices.numel()} images")
    seeds = item_seeds(seed, step, indices, salt=_CAPTION_SALT)
    return torch.tensor([int(np.random.default_rng(s).integers(n)) for s, n in zip(seeds, counts)], dtype=torch.long)


class AdvLoRAMethod(Method):
    """Contrastive retrieval fine-tuning (full / LoRA / AdvLoRA, clean or adversarial) of ``model`` on a
    retrieval dataset whose items are ``{"index", "pixels", "captions"}`` and which exposes ``captions``."""

    default_train: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.01}

    def __init__(self, model: ContrastiveModel, data: Any, config: AdvLoRAConfig) -> None:
        super().__init__()
        if not hasattr(data, "captions") or len(data.captions) != len(data):
            raise ValueError("the training data must expose `captions`, one list per image (a RetrievalSet or "
                             "KarpathyDataset)")
        self.config = config
        self.data = data
        self.model = copy.deepcopy(model)  # the caller's model stays as it was
        self.adapter: AdvLoRAAdapter | None = None
        self.adapter_export: tuple[dict, dict[str, torch.Tensor]] | None = None
        if config.trainable == "full":
            for param in self.model.parameters():
                param.requires_grad_(False)
            towers = [self.model.image_encoder] + ([self.model.text_encoder] if config.train_text else [])
            for tower in towers:
                for param in tower.parameters():
                    param.requires_grad_(True)
            if config.full_parameters is not None:
                train_only(self.model.image_encoder, config.full_parameters)
            self.text_trainable = config.train_text
        else:
            self.adapter = apply_advlora(self.model, config.adapter_spec())
            self.text_trainable = any(p.requires_grad for p in self.model.text_parameters())
        self.eps = parse_eps(config.eps)
        step = parse_eps(config.attack_step_size) if config.attack_step_size is not None else None
        self.attack = PGD(self.eps, steps=config.attack_steps, step_size=step, random_start=True, keep="last")
        self.offsets = np.concatenate([[0], np.cumsum([len(c) for c in data.captions])])
        self.caption_embeddings: torch.Tensor | None = None

    def streams(self) -> dict[str, Stream]:
        return {"train": Stream(self.data, collate=collate_retrieval)}

    @torch.no_grad()
    def prepare(self, device: torch.device) -> None:
        """Move to ``device``; with a frozen text tower, embed every training caption once in fixed batches."""
        self.to(device)
        if self.adapter is not None:
            self.adapter.to(device)
        if not self.text_trainable and self.caption_embeddings is None:
            texts = [t for group in self.data.captions for t in group]
            # Fixed batches over the captions themselves (not the image dataset: nothing needs decoding).
            with eval_mode(self.model):
                self.caption_embeddings = torch.cat([self.model.encode_text(texts[s: s + FROZEN_BATCH]).float()
                                                     for s in range(0, len(texts), FROZEN_BATCH)])
        elif self.caption_embeddings is not None:
            self.caption_embeddings = self.caption_embeddings.to(device)

    def _caption_embeddings(self, indices: torch.Tensor, choice: torch.Tensor, texts: list[str]) -> torch.Tensor:
        if self.text_trainable:
            return self.model.encode_text(texts)
        if self.caption_embeddings is None:
            raise RuntimeError("call prepare(device) before forward: the frozen caption embeddings are not computed")
        rows = torch.as_tensor(self.offsets[indices.cpu().numpy()], dtype=torch.long) + choice
        return self.caption_embeddings[rows.to(self.caption_embeddings.device)]

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        data = batch["train"]
        indices = data["index"]
        device = self.model.device
        pixels = data["pixels"].to(device)
        pixels = pixels.float().div_(255.0) if pixels.dtype == torch.uint8 else pixels
        choice = sample_captions(batch["seed"], batch["step"], indices, [len(c) for c in data["captions"]])
        texts = [captions[int(k)] for captions, k in zip(data["captions"], choice)]
        # Under data parallelism every process sees the whole global batch's captions (and, in the loss, its
        # image embeddings), so the losses and the attack are the ones one process would compute on it.
        text_emb = distributed.gather_with_grad(self._caption_embeddings(indices, choice, texts))
        ids = distributed.gather(caption_ids(texts).to(device))
        sizes = distributed.gather(torch.tensor([len(texts)], device=device)).tolist()
        own = torch.arange(len(texts)) + sum(sizes[:distributed.rank()])
        scale = self.model.logit_scale
        terms: dict[str, torch.Tensor] = {}
        loss = torch.zeros((), device=device)
        if self.config.adversarial:
            objective = RetrievalObjective(self.model, None, own, text_embeddings=text_emb.detach())
            seeds = item_seeds(batch["seed"], batch["step"], indices)
            adversarial = self.attack(objective, pixels, sample_seeds=seeds).adversarial
            images = distributed.gather_with_grad(self.model.encode_image(adversarial))
            terms["adversarial"] = clip_contrastive_loss(scale * images @ text_emb.t(), ids)
            loss = loss + terms["adversarial"]
        if not self.config.adversarial or self.config.clean_weight > 0:
            images = distributed.gather_with_grad(self.model.encode_image(pixels))
            terms["clean"] = clip_contrastive_loss(scale * images @ text_emb.t(), ids)
            loss = loss + (self.config.clean_weight if self.config.adversarial else 1.0) * terms["clean"]
        if self.adapter is not None and self.config.alignment_weight > 0:
            terms["alignment"] = self.adapter.alignment_penalty(self.config.alignment_target)
            loss = loss + self.config.alignment_weight * terms["alignment"]
        if self.adapter is not None and self.config.adaptive_alpha:
            terms["alpha_mean"] = self.adapter.alpha_mean()
        return {"loss": loss, **terms}

    def trainable_module(self) -> nn.Module:
        return self.model

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Every method's groups, except that clustering-initialized adapter factors get no weight decay. Their
        product starts at the k-means reconstruction M C, which was subtracted from the base weight, so decaying
        them towards 0 would pull the model towards W₀ − M C instead of the pre-trained W₀ (peft's
        zero-initialized product decays towards W₀, so plain LoRA keeps its decay; AdvLoRA's own pull is the
        alignment penalty). With ``alpha_lr_scale`` ≠ 1 the scales α form a group of their own at that multiple of
        the run's rate."""
        groups = super().param_groups(weight_decay)
        if self.adapter is None:
            return groups
        named = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        factors = {id(p) for name, p in named if self.config.cluster_init and ("lora_A" in name or "lora_B" in name)}
        scales = {id(p) for name, p in named if name.endswith(".alpha")} if self.config.alpha_lr_scale != 1 else set()
        decay = [p for g in groups if g["weight_decay"] for p in g["params"] if id(p) not in factors | scales]
        no_decay = [p for g in groups for p in g["params"]
                    if (not g["weight_decay"] or id(p) in factors) and id(p) not in scales]
        alphas = [p for g in groups for p in g["params"] if id(p) in scales]
        return [group for group in ({"params": decay, "weight_decay": weight_decay},
                                    {"params": no_decay, "weight_decay": 0.0},
                                    {"params": alphas, "weight_decay": 0.0, "lr_scale": self.config.alpha_lr_scale})
                if group["params"]]

    def alphas(self) -> dict[str, float]:
        """The adaptive scales α per adapted layer (empty without adapters)."""
        return {} if self.adapter is None else self.adapter.alphas()

    def load_averaged_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Merge the adapters (α folded), then copy in the average of the merged weights (eq. 37). An average
        of a trajectory of rank-r products is not itself rank r, so such a run keeps no peft-format adapter
        (:attr:`adapter_export` stays None)."""
        if self.adapter is not None:
            self.model = self.adapter.merge()
            self.adapter = None
            self.adapter_export = None
        load_named_weights(self.model, weights, f"{self.label} weight average")

    def finish(self) -> nn.Module:
        """The trained model as a plain model of its backend (α folded, LoRA merged). The peft-format adapter of
        a LoRA run without weight averaging is kept first, for :meth:`save_peft_adapter`."""
        if self.adapter is not None:
            self.adapter.fold_alphas()
            self.adapter_export = self.adapter.peft_state()
            self.model = self.adapter.merge()
            self.adapter = None
        return super().finish()

    def save_peft_adapter(self, folder: str | Path) -> Path:
        """Write the run's LoRA in peft's format (``adapter_config.json`` + ``adapter_model.safetensors``),
        applicable to the pre-trained model; before or after :meth:`finish`."""
        if self.adapter is not None:
            return self.adapter.save_peft(folder)
        if self.adapter_export is None:
            if self.config.trainable != "full":
                raise ValueError("this run's model is a weight average (train.averaging), which is no rank-r "
                                 "adapter: there is no peft adapter to save, only the merged model")
            raise ValueError(f"trainable={self.config.trainable!r} trains no adapter to save")
        return write_peft_adapter(folder, *self.adapter_export)
