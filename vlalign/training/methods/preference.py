"""Preference optimization for contrastive models (contrastive-PO Algorithms 1 and 2) as a method of the one loop.

L = L_pref(π_θ, π_ref; D_pref) + λ · L_reg(π_θ, π_ref; D_reg), with the text encoder frozen and one of three
trainable parts: the whole image tower (``full``), LoRA adapters on it (``lora``), or a linear head W applied to
both embeddings (``head``, §3.4). What never changes is computed once, before the loop: prompt embeddings, the
reference model's logits for every training image (the reference is the starting model, so no second model is
kept), and in head mode the image features themselves — a step is then a few matrix products.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vlalign.config import check_range, option
from vlalign.data.datasets import IndexView, TensorImageDataset, collate_for
from vlalign.data.preference import PreferenceSet, RegularizationSet
from vlalign.losses.objectives import DEFAULT_BETA_LAMBDA, PREFERENCE_OBJECTIVES, ObjectiveParams, preference_objective
from vlalign.losses.preference import gather, log_policy, regularization_kl
from vlalign.models.base import ContrastiveModel
from vlalign.models.heads import HeadedCLIP, LinearHead
from vlalign.models.lora import add_lora, load_named_weights, merge_lora
from vlalign.models.vocabulary import check_known_words
from vlalign.training import distributed
from vlalign.training.frozen import precompute
from vlalign.training.loop import fit
from vlalign.training.method import Method, Stream
from vlalign.training.train_config import TrainConfig

#: Learning rate per trainable part (Adamax, as the paper's code).
DEFAULT_LR = {"head": 2e-3, "full": 1e-4, "lora": 1e-3}


def preference_train_defaults(trainable: str) -> dict[str, Any]:
    """The loop settings a preference run leaves to its method (``train.lr`` etc. null), by trainable part."""
    return {"optimizer": "adamax", "lr": DEFAULT_LR[trainable], "weight_decay": 0.0}


@dataclass
class PreferenceConfig:
    """The preference objective and what it trains; ``beta`` / ``lam`` left null take the method's defaults."""

    method: str = option("dpo", f"objective: one of {sorted(PREFERENCE_OBJECTIVES)}")
    trainable: Literal["head", "full", "lora"] = option("full", "what is trained: the whole image tower, LoRA "
                                                                "adapters on it, or a linear head W on both embeddings")
    beta: float | None = option(None, "β of the objective (null: DPO 1, IPO 0.01, KTO 1.5, SimPO 2, as the paper)")
    lam: float | None = option(None, "λ, weight of the KL regularizer on clean images (null: DPO 1, IPO and KTO 0.01; "
                                     "for ce, the weight of the clean-image cross-entropy)")
    label_smoothing: float = option(0.1, "cDPO: probability that a preference label is flipped")
    simpo_gamma: float = option(0.5, "SimPO: target reward margin γ")
    kto_desirable_weight: float = option(1.0, "KTO: weight of desirable samples")
    kto_undesirable_weight: float = option(1.0, "KTO: weight of undesirable samples")
    kl_direction: Literal["policy_ref", "ref_policy"] = option("policy_ref", "KL(π_θ‖π_ref) as the paper writes it, "
                                                                             "or KL(π_ref‖π_θ) as its code computes it")
    lora_rank: int = option(8, "LoRA rank (trainable: lora)")
    lora_alpha: float = option(16.0, "LoRA scale α (trainable: lora)")
    lora_targets: list[str] | None = option(None, "names of the linear layers that get LoRA (null: all)")

    def __post_init__(self) -> None:
        if self.method not in PREFERENCE_OBJECTIVES:
            raise ValueError(f"method must be one of {sorted(PREFERENCE_OBJECTIVES)}, got {self.method!r}")
        if self.beta is not None:
            check_range("beta", self.beta, 0, low_open=True)
        if self.lam is not None:
            check_range("lam", self.lam, 0)
        check_range("label_smoothing", self.label_smoothing, 0, 0.5, high_open=True)
        check_range("simpo_gamma", self.simpo_gamma)
        check_range("kto_desirable_weight", self.kto_desirable_weight, 0)
        check_range("kto_undesirable_weight", self.kto_undesirable_weight, 0)
        check_range("lora_rank", self.lora_rank, 1)
        check_range("lora_alpha", self.lora_alpha, 0, low_open=True)

    @property
    def effective_beta(self) -> float:
        """``beta``, or this method's default when it is null."""
        return DEFAULT_BETA_LAMBDA[self.method][0] if self.beta is None else self.beta

    @property
    def effective_lam(self) -> float:
        """``lam``, or this method's default when it is null."""
        return DEFAULT_BETA_LAMBDA[self.method][1] if self.lam is None else self.lam

    def objective_params(self) -> ObjectiveParams:
        return ObjectiveParams(beta=self.effective_beta, label_smoothing=self.label_smoothing,
                               simpo_gamma=self.simpo_gamma, kto_desirable_weight=self.kto_desirable_weight,
                               kto_undesirable_weight=self.kto_undesirable_weight, batch_mean=distributed.global_mean)


def _loss_dtype(tensor: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (bf16 autocast) go to float32 before any loss; float32/64 stay as they are."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


class ContrastivePreference(Method):
    """Contrastive preference optimization: ``forward`` returns ``loss = loss_pref + λ·loss_reg`` and diagnostics.

    ``pref`` items hold ``pixels``, ``chosen`` and ``rejected`` (indices into ``prompts``); ``reg`` items hold
    ``pixels`` and, for the ``ce`` baseline, ``label`` (indices into ``reg_prompts``, default ``prompts``). The
    given ``model`` is not modified: full and LoRA modes train a copy; head mode adds a head over the frozen model.
    """

    def __init__(self, model: ContrastiveModel, pref: Dataset, prompts: tuple[str, ...], reg: Dataset | None,
                 config: PreferenceConfig, reg_prompts: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.config = config
        self.default_train = preference_train_defaults(config.trainable)
        self.prompts, self.reg_prompts = tuple(prompts), tuple(reg_prompts or prompts)
        self.pref_data, self.reg_data = pref, reg
        self.use_reg = reg is not None and len(reg) > 0 and config.effective_lam > 0
        self.objective, self.params = preference_objective(config.method), config.objective_params()
        model = model.eval()
        for param in model.parameters():
            param.requires_grad_(False)
        if config.trainable == "head":
            self.policy: ContrastiveModel = HeadedCLIP(model, LinearHead(model.embed_dim).to(next(model.parameters())))
            self.trained: nn.Module = self.policy.head
        else:
            self.policy = copy.deepcopy(model)
            self.trained = self.policy.image_encoder
            if config.trainable == "full":
                for param in self.trained.parameters():
                    param.requires_grad_(True)
        self.frozen: dict[str, torch.Tensor] = {}

    @property
    def label(self) -> str:
        return f"{self.config.method}/{self.config.trainable}"

    # ---------------------------------------------------------------------------------------------- contract
    def streams(self) -> dict[str, Stream]:
        streams = {"pref": self._stream(self.pref_data)}
        if self.use_reg:
            streams["reg"] = self._stream(self.reg_data)
        return streams

    def _stream(self, data: Dataset) -> Stream:
        # Head mode reads cached features by index, so its batches need no pixels decoded.
        if self.config.trainable == "head":
            return Stream(IndexView(data))
        return Stream(data, collate=collate_for(data))

    def prepare(self, device: torch.device) -> None:
        self.to(device)
        base = self.policy.base if isinstance(self.policy, HeadedCLIP) else self.policy
        check_known_words(base, [*self.prompts, *self.reg_prompts], "preference prompts")
        with torch.no_grad():
            scale = base.logit_scale.detach()
            texts = {"pref": base.encode_text(list(self.prompts))}
            texts["reg"] = texts["pref"] if self.reg_prompts == self.prompts else base.encode_text(list(self.reg_prompts))
        frozen: dict[str, torch.Tensor] = {"scale": scale}
        for which, data in (("pref", self.pref_data), ("reg", self.reg_data if self.use_reg else None)):
            if data is None:
                continue
            features = precompute(data, lambda b: base.encode_image(b["pixels"].to(device).float().div_(255.0)),
                                  collate=collate_for(data)).to(device)
            frozen[f"{which}_text"] = texts[which]
            frozen[f"{which}_reference"] = scale * features @ texts[which].t()
            if self.config.trainable == "head":
                frozen[f"{which}_features"] = features
                keys = ("chosen", "rejected") if which == "pref" else (("label",) if self.config.method == "ce" else ())
                for key in keys:
                    frozen[f"{which}_{key}"] = precompute(data, lambda b, k=key: torch.as_tensor(b[k]),
                                                          collate=collate_for(data)).to(device)
        if self.config.trainable == "lora" and not any("lora_" in n for n, _ in self.trained.named_parameters()):
            # Here rather than in __init__: the loop has seeded the RNG, so the adapters' random init is the run's.
            add_lora(self.policy, self.trained, self.config.lora_rank, self.config.lora_alpha, self.config.lora_targets)
            self.policy.to(device)
            self.trained = self.policy.image_encoder  # a view-like tower must be re-read to see the adapters
        if self.config.method == "ce" and self.use_reg and "reg_label" not in frozen:
            sample = self.reg_data[0]
            if sample is not None and "label" not in sample:
                raise ValueError("the cross-entropy baseline regularizes with labelled clean images: the "
                                 "regularization set has no labels")
        self.frozen = frozen

    def trainable_module(self) -> nn.Module:
        return self.trained

    def load_averaged_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """LoRA runs merge their adapters first (the average is of merged weights, eq. 37), then every mode
        copies the average in by name."""
        if self.config.trainable == "lora":
            merge_lora(self.policy)
            self.trained = self.policy.image_encoder  # re-read: merging put plain layers back in their parents
        load_named_weights(self.trained, weights, f"{self.label} weight average")

    def finish(self) -> ContrastiveModel:
        if self.config.trainable == "lora":
            merge_lora(self.policy)
        for param in self.policy.parameters():
            param.requires_grad_(False)
        return self.policy.eval()

    # ------------------------------------------------------------------------------------------------ forward
    def _logits(self, which: str, batch: dict[str, Any]) -> torch.Tensor:
        text = self.frozen[f"{which}_text"]
        if self.config.trainable == "head":
            head = self.policy.head
            image = head(self.frozen[f"{which}_features"][batch["index"]])
            return _loss_dtype(self.frozen["scale"] * image @ head(text).t())
        pixels = batch["pixels"].float().div_(255.0)
        return _loss_dtype(self.frozen["scale"] * self.policy.encode_image(pixels) @ text.t())

    def _field(self, which: str, key: str, batch: dict[str, Any]) -> torch.Tensor:
        if self.config.trainable == "head":
            return self.frozen[f"{which}_{key}"][batch["index"]]
        return torch.as_tensor(batch[key], device=self.frozen["scale"].device)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        pref = batch["pref"]
        index = pref["index"]
        logits = self._logits("pref", pref)
        reference = self.frozen["pref_reference"][index].to(logits.dtype)
        chosen, rejected = self._field("pref", "chosen", pref), self._field("pref", "rejected", pref)
        loss_pref = self.objective(logits, reference, chosen, rejected, self.params)
        loss_reg = torch.zeros((), dtype=logits.dtype, device=logits.device)
        if self.use_reg:
            reg = batch["reg"]
            reg_logits = self._logits("reg", reg)
            if self.config.method == "ce":
                loss_reg = F.cross_entropy(reg_logits, self._field("reg", "label", reg))
            else:
                reg_reference = self.frozen["reg_reference"][reg["index"]].to(reg_logits.dtype)
                loss_reg = regularization_kl(reg_logits, reg_reference, self.config.kl_direction).mean()
        with torch.no_grad():
            lp, lr = log_policy(logits.detach()), log_policy(reference)
            ratio = (gather(lp, chosen) - gather(lp, rejected)) - (gather(lr, chosen) - gather(lr, rejected))
            accuracy = (logits.detach().argmax(1) == chosen).to(logits.dtype)
        return {"loss": loss_pref + self.config.effective_lam * loss_reg, "loss_pref": loss_pref, "loss_reg": loss_reg,
                "policy_ratio": ratio.mean(), "pref_accuracy": accuracy.mean()}


# -------------------------------------------------------------------------------------------- library entry
@dataclass
class PreferenceResult:
    """The aligned model and what happened during training."""

    model: ContrastiveModel
    config: PreferenceConfig
    history: list[dict[str, float]] = field(default_factory=list)
    alternates: dict[str, ContrastiveModel] = field(default_factory=dict)


def preference_datasets(pref: PreferenceSet, reg: RegularizationSet | None) -> tuple[Dataset, Dataset | None]:
    """In-memory preference and regularization sets as the datasets :class:`ContrastivePreference` reads."""
    pref_data = TensorImageDataset(pref.images, chosen=pref.chosen, rejected=pref.rejected)
    if reg is None or len(reg) == 0:
        return pref_data, None
    fields = {"label": reg.labels} if reg.labels is not None else {}
    return pref_data, TensorImageDataset(reg.images, **fields)


def train_preference(model: ContrastiveModel, pref: PreferenceSet, reg: RegularizationSet | None,
                     config: PreferenceConfig, train: TrainConfig | None = None, out: Any = None,
                     progress: bool = True) -> PreferenceResult:
    """Align ``model`` with the triplets of ``pref`` while keeping its policy on ``reg`` near the reference.

    ``model`` itself is left untouched. With ``out``, the run checkpoints into ``out/state`` and resumes from it.
    """
    pref_data, reg_data = preference_datasets(pref, reg)
    reg_prompts = reg.prompts if reg is not None else None
    method = ContrastivePreference(model, pref_data, pref.prompts, reg_data, config, reg_prompts)
    result = fit(method, train or TrainConfig(), out, progress=progress)
    return PreferenceResult(result.model, config, result.history, result.alternates)
