"""Robust fine-tuning baselines of the image tower: TeCoA and FARE (``vlalign train``, methods ``tecoa``/``fare``).

- TeCoA (Mao et al., "Understanding Zero-Shot Adversarial Robustness for Large-Scale Models", ICLR 2023):
  supervised adversarial training on the zero-shot logits, min_θ E[max_δ CE(s·φ_θ(x+δ)ᵀT, y)] with the class
  prompt embeddings T frozen.
- FARE (Schlarmann et al., "Robust CLIP", ICML 2024, eq. 3): unsupervised, min_θ E[max_δ ‖φ_θ(x+δ) − φ_orig(x)‖₂²]
  with φ_orig the frozen original encoder; no labels, so the embedding stays compatible with the text tower.

Both use ℓ∞ PGD-10 with a random start, step ε/4, and the final iterate, as the papers do (ε = 2/255 or 4/255),
train only the image tower, and keep the text tower and temperature frozen. The frozen class-prompt
embeddings are computed once; FARE's reference embeddings φ_orig(x) once per training image, on first use.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vlalign.attacks.registry import split_attack_names
from vlalign.attacks.threat_model import parse_eps
from vlalign.attacks.objectives import EmbeddingObjective, LogitObjective
from vlalign.attacks.pgd import PGD
from vlalign.data.mini_world import MiniWorld, parse_split
from vlalign.models.embeddings import class_text_embeddings
from vlalign.models.base import ContrastiveModel
from vlalign.models.loading import load_model
from vlalign.training.metrics_log import MetricsLogger, check_finite
from vlalign.training.schedule import warmup_cosine
from vlalign.training.state import has_training_state, load_training_state, save_training_state

METHODS = ("tecoa", "fare")


@dataclass
class RobustFinetuneConfig:
    """A TeCoA or FARE run: model, threat model, optimization, data and evaluation; validated on load."""

    #: "tecoa" (adversarial CE on zero-shot logits) or "fare" (unsupervised embedding-space).
    method: str
    #: Model spec: "mini" (the embedded MiniCLIP), a MiniCLIP or transformers CLIP folder.
    model: str = "mini"
    seed: int = 0
    #: ℓ∞ radius of the training attack on [0, 1] images, e.g. "4/255".
    eps: str = "4/255"
    #: PGD iterations of the training attack (PGD-10 in both papers).
    attack_steps: int = 10
    #: PGD step size; default ε/4 (1/255 at ε = 4/255, as in both papers).
    attack_step_size: str | None = None
    #: Optimizer steps and batch size.
    steps: int = 150
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1
    #: Training images: ``train_images`` of mini-world split ``train_split`` rendered from ``train_seed``.
    train_split: str = "clean"
    train_images: int = 10000
    train_seed: int = 10000
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}"])
    #: Evaluation after training, on fresh images (``eval_seed`` differs from ``train_seed``).
    eval_images: int = 256
    eval_seed: int = 4242
    eval_eps: list[str] = field(default_factory=lambda: ["2/255", "4/255"])
    eval_attacks: list[str] = field(default_factory=lambda: ["apgd-ce", "pgd"])
    eval_steps: int = 20
    checkpoint_every: int = 50
    log_every: int = 10
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        parse_eps(self.eps)
        if self.attack_step_size is not None:
            parse_eps(self.attack_step_size)
        for name in ("attack_steps", "steps", "batch_size", "train_images", "eval_images", "eval_steps",
                     "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size > self.train_images:
            raise ValueError(f"batch_size {self.batch_size} exceeds train_images {self.train_images}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        parse_split(self.train_split)
        if self.train_seed == self.eval_seed:
            raise ValueError(f"eval_seed must differ from train_seed ({self.train_seed}): evaluate on fresh images")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ValueError(f"templates must be a non-empty list of strings containing '{{}}', got {self.templates!r}")
        for e in self.eval_eps:
            parse_eps(e)
        split_attack_names(self.eval_attacks)

    @property
    def epsilon(self) -> float:
        """``eps`` as a float."""
        return parse_eps(self.eps)

    @property
    def step_size(self) -> float:
        """The training attack's step size as a float."""
        return parse_eps(self.attack_step_size) if self.attack_step_size is not None else self.epsilon / 4


# ----------------------------------------------------------------------------------------- pure losses

def tecoa_loss(image_embeddings: torch.Tensor, class_embeddings: torch.Tensor, labels: torch.Tensor,
               logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Mean CE of zero-shot logits ``s · Iᵀ T`` on (adversarial) normalized image embeddings (TeCoA)."""
    return F.cross_entropy(logit_scale * image_embeddings @ class_embeddings.t(), labels)


def fare_loss(embeddings: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ‖φ(x_adv) − φ_orig(x)‖₂² (FARE, eq. 3)."""
    if embeddings.shape != reference.shape:
        raise ValueError(f"embeddings {tuple(embeddings.shape)} and reference {tuple(reference.shape)} differ in shape")
    return (embeddings - reference).pow(2).sum(1).mean()


# ------------------------------------------------------------------------------------------ the loop

def _param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (no_decay if param.dim() < 2 or "pos" in name or "embedding" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _ReferenceCache:
    """φ_orig(x) of the training pool, computed by the frozen original encoder once per image, on first use."""

    def __init__(self, reference: ContrastiveModel, n: int, dim: int, device: torch.device) -> None:
        self.reference = reference
        self.values = torch.zeros(n, dim, device=device)
        self.known = torch.zeros(n, dtype=torch.bool, device=device)

    @torch.no_grad()
    def __call__(self, idx: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        missing = ~self.known[idx]
        if bool(missing.any()):
            self.values[idx[missing]] = self.reference.encode_image(pixels[missing], normalize=False).float()
            self.known[idx[missing]] = True
        return self.values[idx]


def robust_finetune(config: RobustFinetuneConfig, out: str | Path) -> tuple[ContrastiveModel, dict]:
    """Train per ``config`` (resuming from ``out/state`` if present); returns the model and training stats."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model = load_model(config.model, device)
    world = MiniWorld()
    pool = world.sample(config.train_split, config.train_images, config.train_seed)
    images = pool.images.to(device)  # uint8; converted per batch
    labels = pool.labels.to(device)
    class_emb = class_text_embeddings(model, pool.classnames, config.templates).float().to(device)
    logit_scale = model.logit_scale.detach().float()
    reference = None
    if config.method == "fare":
        original = copy.deepcopy(model).eval()
        for p in original.parameters():
            p.requires_grad_(False)
        reference = _ReferenceCache(original, len(pool), model.embed_dim, device)
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = model.image_encoder
    for p in trainable.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(_param_groups(trainable, config.weight_decay), lr=config.lr, betas=(0.9, 0.98))
    scheduler = warmup_cosine(optimizer, config.steps, config.warmup_fraction)
    generator = torch.Generator().manual_seed(config.seed)
    attack = PGD(config.epsilon, norm="linf", steps=config.attack_steps, step_size=config.step_size,
                 random_start=True, keep="last")
    state_dir = out / "state"
    start = 0
    if has_training_state(state_dir):
        start = load_training_state(state_dir, trainable, optimizer, scheduler, generator)["step"]
    logger = MetricsLogger(out, resume=start > 0)
    began = time.perf_counter()
    model.train()
    bar = tqdm(range(start, config.steps), desc=config.method, disable=not config.progress, initial=start,
               total=config.steps)
    value = float("nan")
    for step in bar:
        idx = torch.randint(0, len(pool), (config.batch_size,), generator=generator).to(device)
        x = images[idx].float().div_(255.0)
        y = labels[idx]
        if config.method == "tecoa":
            objective = LogitObjective(model, class_emb, y)
        else:
            ref = reference(idx, x)
            objective = EmbeddingObjective(model, ref, normalize=False)
        # Seeded by the step, so a resumed run draws the same attacks.
        adversarial = attack(objective, x, seed=config.seed * 1_000_003 + step).adversarial
        if config.method == "tecoa":
            loss = tecoa_loss(model.encode_image(adversarial), class_emb, y, logit_scale)
        else:
            loss = fare_loss(model.encode_image(adversarial, normalize=False).float(), ref)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        check_finite(value, step, config.method)
        if step % config.log_every == 0 or step == config.steps - 1:
            logger.log(step, loss=value, lr=scheduler.get_last_lr()[0])
            bar.set_postfix(loss=f"{value:.4f}")
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
            save_training_state(state_dir, trainable, optimizer, scheduler, step + 1, generator)
    logger.close()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, {"final_loss": value, "steps": config.steps, "train_seconds": time.perf_counter() - began}
