"""Preference optimization for contrastive models (contrastive-PO Algorithms 1 and 2).

L = L_pref(π_θ, π_ref; D_pref) + λ · L_reg(π_θ, π_ref; D_reg), with the text encoder frozen and one of three
trainable parts: the whole image tower (``full``), LoRA adapters on it (``lora``), or a linear head W applied to
both embeddings (``head``, §3.4). What never changes is computed once: prompt embeddings, the reference model's
logits for every training image (the reference is the starting model, so no second model is kept), and in head
mode the image features themselves — an epoch is then a few matrix products.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from vlalign.data.preference import PreferenceSet, RegularizationSet
from vlalign.models.embeddings import image_embeddings
from vlalign.losses.objectives import DEFAULT_BETA_LAMBDA, PREFERENCE_OBJECTIVES, ObjectiveParams, preference_objective
from vlalign.losses.preference import gather, log_policy, regularization_kl
from vlalign.models.base import ContrastiveModel
from vlalign.models.loading import save_model
from vlalign.models.heads import HeadedCLIP, LinearHead
from vlalign.models.lora import add_lora, merge_lora
from vlalign.training.averaging import WeightAverager
from vlalign.training.metrics_log import MetricsLogger, check_finite
from vlalign.training.schedule import warmup_cosine
from vlalign.training.state import has_training_state, load_training_state, save_training_state

DEFAULT_LR = {"head": 2e-3, "full": 1e-4, "lora": 1e-3}


@dataclass
class PreferenceTrainConfig:
    """One preference-optimization run. ``beta``/``lam``/``lr`` default per method and trainable part."""

    method: str = "dpo"
    trainable: Literal["head", "full", "lora"] = "full"
    beta: float | None = None
    lam: float | None = None
    label_smoothing: float = 0.1
    simpo_gamma: float = 0.5
    kto_desirable_weight: float = 1.0
    kto_undesirable_weight: float = 1.0
    kl_direction: Literal["policy_ref", "ref_policy"] = "policy_ref"
    steps: int = 300
    batch_size: int = 64
    lr: float | None = None
    weight_decay: float = 0.0
    warmup_fraction: float = 0.1
    averaging: Literal["bma", "ema", "none"] = "bma"
    #: Other averages kept in the same run, returned in ``PreferenceResult.alternates`` (BMA vs EMA, Table 5).
    extra_averaging: list[Literal["bma", "ema", "none"]] = field(default_factory=list)
    bma_gamma: float = 0.7
    ema_decay: float = 0.99
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: list[str] | None = None
    seed: int = 0
    checkpoint_every: int = 100
    device: str = "cpu"
    # Data and evaluation, for `vlalign train` (library callers pass data sets directly).
    model: str = "mini"
    data: str | None = None
    n_pref: int = 2000
    n_reg: int = 2000
    data_seed: int = 100
    eval_images: int = 600
    eval_seed: int = 5000

    def __post_init__(self) -> None:
        if self.method not in PREFERENCE_OBJECTIVES:
            raise ValueError(f"method must be one of {sorted(PREFERENCE_OBJECTIVES)}, got {self.method!r}")
        beta, lam = DEFAULT_BETA_LAMBDA[self.method]
        self.beta = beta if self.beta is None else self.beta
        self.lam = lam if self.lam is None else self.lam
        self.lr = DEFAULT_LR[self.trainable] if self.lr is None else self.lr
        checks = {"beta": self.beta > 0, "lam": self.lam >= 0, "lr": self.lr > 0, "steps": self.steps >= 1,
                  "batch_size": self.batch_size >= 1, "warmup_fraction": 0 <= self.warmup_fraction < 1,
                  "bma_gamma": self.bma_gamma > 0, "ema_decay": 0 <= self.ema_decay < 1, "lora_rank": self.lora_rank >= 1,
                  "label_smoothing": 0 <= self.label_smoothing < 0.5, "checkpoint_every": self.checkpoint_every >= 1,
                  "n_pref": self.n_pref >= 1, "n_reg": self.n_reg >= 0, "eval_images": self.eval_images >= 1}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid value for {', '.join(f'{b}={getattr(self, b)!r}' for b in bad)}")

    def objective_params(self) -> ObjectiveParams:
        return ObjectiveParams(beta=self.beta, label_smoothing=self.label_smoothing, simpo_gamma=self.simpo_gamma,
                               kto_desirable_weight=self.kto_desirable_weight, kto_undesirable_weight=self.kto_undesirable_weight)


@dataclass
class PreferenceResult:
    """The aligned model and what happened during training."""

    model: ContrastiveModel
    config: PreferenceTrainConfig
    history: list[dict[str, float]] = field(default_factory=list)
    alternates: dict[str, ContrastiveModel] = field(default_factory=dict)


class _Policy:
    """The trainable part and a function from (which set, indices) to policy logits."""

    def __init__(self, model: ContrastiveModel, config: PreferenceTrainConfig, pref: PreferenceSet,
                 reg: RegularizationSet | None, pref_text: torch.Tensor, reg_text: torch.Tensor | None,
                 pref_features: torch.Tensor | None, reg_features: torch.Tensor | None) -> None:
        self.config, self.pref, self.reg = config, pref, reg
        self.device = torch.device(config.device)
        self.pref_text, self.reg_text = pref_text.to(self.device), None if reg_text is None else reg_text.to(self.device)
        self.scale = model.logit_scale.detach().to(self.device)
        for param in model.parameters():
            param.requires_grad_(False)
        if config.trainable == "head":
            self.model: ContrastiveModel = HeadedCLIP(model, LinearHead(model.embed_dim).to(self.device))
            self.module: torch.nn.Module = self.model.head
            self.features = {"pref": pref_features.to(self.device),
                             "reg": None if reg_features is None else reg_features.to(self.device)}
            self.parameters = list(self.module.parameters())
        else:
            self.model = model
            self.module = model.image_encoder
            if config.trainable == "lora":
                self.parameters = add_lora(self.module, config.lora_rank, config.lora_alpha, config.lora_targets)
            else:
                self.parameters = list(self.module.parameters())
                for param in self.parameters:
                    param.requires_grad_(True)
            self.features = None
        self.model.train()

    def logits(self, which: str, index: torch.Tensor) -> torch.Tensor:
        text = self.pref_text if which == "pref" else self.reg_text
        if self.features is not None:
            head = self.model.head
            return self.scale * head(self.features[which][index]) @ head(text).t()
        images = (self.pref if which == "pref" else self.reg).images
        pixels = images[index.cpu()].to(self.device).float().div_(255.0)
        return self.scale * self.model.encode_image(pixels) @ text.t()

    def finish(self, copy_model: bool = False) -> ContrastiveModel:
        """The trained model with LoRA merged and gradients off (a copy when ``copy_model``)."""
        model = copy.deepcopy(self.model) if copy_model else self.model
        if self.config.trainable == "lora":
            merge_lora(model.image_encoder)
        for param in model.parameters():
            param.requires_grad_(False)
        return model.eval()


@torch.no_grad()
def _frozen_quantities(model: ContrastiveModel, pref: PreferenceSet, reg: RegularizationSet | None):
    """Prompt embeddings, image features and reference logits: everything that never changes, computed once."""
    pref_text = model.encode_text(list(pref.prompts)).float()
    reg_text = None
    if reg is not None and len(reg):
        reg_text = pref_text if tuple(reg.prompts) == tuple(pref.prompts) else model.encode_text(list(reg.prompts)).float()
    scale = float(model.logit_scale)
    pref_features = image_embeddings(model, pref.images)
    reg_features = image_embeddings(model, reg.images) if reg_text is not None else None
    pref_ref = scale * pref_features @ pref_text.cpu().t()
    reg_ref = scale * reg_features @ reg_text.cpu().t() if reg_features is not None else None
    return pref_text, reg_text, pref_features, reg_features, pref_ref, reg_ref


def train_preference(model: ContrastiveModel, pref: PreferenceSet, reg: RegularizationSet | None,
                     config: PreferenceTrainConfig, out: str | Path | None = None, progress: bool = True) -> PreferenceResult:
    """Align ``model`` with the preferences in ``pref`` while keeping its policy on ``reg`` near the reference.

    ``model`` itself is left untouched (full and LoRA modes train a copy; head mode adds a head over the frozen
    model). ``config.extra_averaging`` averages are restarted, not restored, when a run resumes. With ``out``, a resumable state is saved every ``checkpoint_every`` steps and per-step metrics go to
    ``out/metrics.csv``; a run restarted with the same ``out`` continues where it stopped.
    """
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model = model.to(device).eval()
    if config.trainable != "head":
        model = copy.deepcopy(model)
    pref_text, reg_text, pref_feat, reg_feat, pref_ref, reg_ref = _frozen_quantities(model, pref, reg)
    use_reg = reg_text is not None and config.lam > 0
    if config.method == "ce" and use_reg and reg.labels is None:
        raise ValueError("the cross-entropy baseline regularizes with labelled clean images: RegularizationSet.labels is None")
    policy = _Policy(model, config, pref, reg, pref_text, reg_text, pref_feat, reg_feat)
    objective, params = preference_objective(config.method), config.objective_params()
    optimizer = torch.optim.Adamax(policy.parameters, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = warmup_cosine(optimizer, config.steps, config.warmup_fraction)
    averager = WeightAverager(policy.module, config.averaging, config.steps, config.bma_gamma, config.ema_decay)
    extras = {kind: WeightAverager(policy.module, kind, config.steps, config.bma_gamma, config.ema_decay)
              for kind in config.extra_averaging if kind != config.averaging}
    generator = torch.Generator().manual_seed(config.seed)
    chosen, rejected = pref.chosen.to(device), pref.rejected.to(device)
    pref_ref, reg_ref = pref_ref.to(device), None if reg_ref is None else reg_ref.to(device)

    start, logger, state_dir = 0, None, None
    if out is not None:
        out = Path(out)
        state_dir = out / "state"
        if has_training_state(state_dir):
            meta = load_training_state(state_dir, policy.module, optimizer, scheduler, generator)
            start = int(meta["step"])
            averager.load_state_dict({"average": meta["extra_tensors"], "weight_sum": meta["extra"]["weight_sum"],
                                      "step": meta["extra"]["avg_step"]})
        logger = MetricsLogger(out, resume=start > 0)
    history: list[dict[str, float]] = []
    for step in tqdm(range(start, config.steps), desc=f"{config.method}/{config.trainable}", disable=not progress,
                     initial=start, total=config.steps):
        idx = torch.randint(0, len(pref), (config.batch_size,), generator=generator).to(device)
        logits = policy.logits("pref", idx)
        loss_pref = objective(logits, pref_ref[idx], chosen[idx], rejected[idx], params)
        loss_reg = torch.zeros((), device=device)
        if use_reg:
            ridx = torch.randint(0, len(reg), (config.batch_size,), generator=generator).to(device)
            reg_logits = policy.logits("reg", ridx)
            if config.method == "ce":
                loss_reg = torch.nn.functional.cross_entropy(reg_logits, reg.labels.to(device)[ridx])
            else:
                loss_reg = regularization_kl(reg_logits, reg_ref[ridx], config.kl_direction).mean()
        loss = loss_pref + config.lam * loss_reg
        check_finite(float(loss.detach()), step, f"train {config.method}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        averager.update(policy.module)
        for extra in extras.values():
            extra.update(policy.module)
        if step % 10 == 0 or step == config.steps - 1:
            with torch.no_grad():
                lp, lr_ = log_policy(logits), log_policy(pref_ref[idx])
                margin = (gather(lp, chosen[idx]) - gather(lp, rejected[idx])) - (gather(lr_, chosen[idx]) - gather(lr_, rejected[idx]))
                row = {"step": step, "loss": float(loss), "loss_pref": float(loss_pref), "loss_reg": float(loss_reg),
                       "policy_ratio": float(margin.mean()), "pref_accuracy": float((logits.argmax(1) == chosen[idx]).float().mean()),
                       "lr": scheduler.get_last_lr()[0]}
            history.append(row)
            if logger is not None:
                logger.log(**row)
        if state_dir is not None and (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
            save_training_state(state_dir, policy.module, optimizer, scheduler, step + 1, generator,
                                extra={"weight_sum": averager.weight_sum, "avg_step": averager.step},
                                extra_tensors=averager.average)
    if logger is not None:
        logger.close()
    alternates = {}
    for kind, extra in extras.items():
        extra.copy_to(policy.module)
        alternates[kind] = policy.finish(copy_model=True)
    averager.copy_to(policy.module)
    return PreferenceResult(policy.finish(), config, history, alternates)


def save_aligned_model(result: PreferenceResult, out: str | Path, base_spec: str) -> None:
    """Write the aligned model into ``out`` (see :func:`vlalign.models.loading.save_model`)."""
    save_model(result.model, out, base_spec,
               {"method": result.config.method, "trainable": result.config.trainable, "base_model": base_spec})
