"""Pretrain MiniCLIP with symmetric InfoNCE (``vlalign pretrain-mini``).

``world_kind`` picks the pretraining data: ``shapes`` (the mini world, :mod:`vlalign.data.mini_world`; the
embedded ``mini`` model) or ``people`` (the people world, :mod:`vlalign.data.people`; the embedded
``mini-people`` model). Only the data, the vocabulary and the final evaluation depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from vlalign.data.image_set import ImageSet
from vlalign.data.mini_world import WorldConfig, vocabulary
from vlalign.data.people import PeopleConfig, people_vocabulary
from vlalign.losses.contrastive import clip_contrastive_loss
from vlalign.models.mini_clip import MiniCLIP, MiniCLIPConfig
from vlalign.training.metrics_log import MetricsLogger, check_finite
from vlalign.training.schedule import warmup_cosine
from vlalign.training.state import has_training_state, load_training_state, save_training_state


@dataclass
class ModelShape:
    """MiniCLIP architecture knobs a pretraining config may set (the vocabulary comes from the world).

    ``image_size`` is the side the model resizes its input to; None means the world's image size.
    ``init_temperature`` is τ at initialization (the logit scale 1/τ is learned, clamped at 100).
    """

    image_size: int | None = None
    stem_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    vision_width: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    embed_dim: int = 128
    init_temperature: float = 0.07


@dataclass
class PretrainConfig:
    """Everything ``vlalign pretrain-mini`` needs; loaded from YAML and validated."""

    seed: int = 0
    n_images: int = 60000
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    eval_images: int = 1200
    eval_seed: int = 1
    checkpoint_every: int = 500
    device: str = "cpu"
    workers: int = 2
    world_kind: Literal["shapes", "people"] = "shapes"
    world: WorldConfig = field(default_factory=WorldConfig)
    people: PeopleConfig = field(default_factory=PeopleConfig)
    model: ModelShape = field(default_factory=ModelShape)

    def __post_init__(self) -> None:
        for name in ("n_images", "steps", "batch_size", "eval_images", "checkpoint_every", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size > self.n_images:
            raise ValueError(f"batch_size {self.batch_size} exceeds n_images {self.n_images}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")


def build_mini_clip(config: PretrainConfig) -> MiniCLIP:
    """A freshly initialized MiniCLIP for this pretraining config (vocabulary and image size from its world)."""
    shape = config.model
    if config.world_kind == "people":
        image_size, vocab = config.people.image_size, people_vocabulary()
    else:
        image_size, vocab = config.world.image_size, vocabulary()
    return MiniCLIP(MiniCLIPConfig(
        image_size=image_size if shape.image_size is None else shape.image_size, stem_channels=tuple(shape.stem_channels), vision_width=shape.vision_width,
        vision_layers=shape.vision_layers, vision_heads=shape.vision_heads, text_width=shape.text_width,
        text_layers=shape.text_layers, text_heads=shape.text_heads, embed_dim=shape.embed_dim, vocab=vocab,
        init_temperature=shape.init_temperature,
    ))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.dim() < 2 or "pos" in name or "embedding" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def pretrain_clip(model: MiniCLIP, data: ImageSet, config: PretrainConfig, out: str | Path,
                  progress: bool = True) -> MiniCLIP:
    """Train ``model`` on the captioned ``data`` with symmetric InfoNCE, checkpointing every
    ``checkpoint_every`` steps into ``out/state`` (and resuming from it if present)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model = model.to(device)
    tokens = {k: v.to(device) for k, v in model.tokenize(data.captions).items()}
    _, text_ids = torch.unique(tokens["input_ids"], dim=0, return_inverse=True)
    images = data.images.to(device)  # uint8; converted per batch
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98))
    scheduler = warmup_cosine(optimizer, config.steps, config.warmup_fraction)
    generator = torch.Generator().manual_seed(config.seed)
    state_dir = out / "state"
    start = 0
    if has_training_state(state_dir):
        start = load_training_state(state_dir, model, optimizer, scheduler, generator)["step"]
    logger = MetricsLogger(out, resume=start > 0)
    model.train()
    bar = tqdm(range(start, config.steps), desc="pretrain", disable=not progress, initial=start, total=config.steps)
    for step in bar:
        idx = torch.randint(0, config.n_images, (config.batch_size,), generator=generator).to(device)
        pixels = images[idx].float().div_(255.0)
        batch_tokens = {k: v[idx] for k, v in tokens.items()}
        img = model.encode_image(pixels)
        txt = model.encode_tokens(batch_tokens)
        loss = clip_contrastive_loss(model.logit_scale * img @ txt.t(), text_ids[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        check_finite(value, step, "pretrain-mini")
        if step % 20 == 0 or step == config.steps - 1:
            logger.log(step, loss=value, lr=scheduler.get_last_lr()[0], logit_scale=float(model.logit_scale.detach()))
            bar.set_postfix(loss=f"{value:.3f}")
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
            save_training_state(state_dir, model, optimizer, scheduler, step + 1, generator)
    logger.close()
    return model.eval()
