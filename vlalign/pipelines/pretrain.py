"""``vlalign pretrain-mini``: pretrain a MiniCLIP on its world, evaluate it on fresh images, save it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from vlalign.config import config_to_dict
from vlalign.data.image_set import ImageSet
from vlalign.data.mini_world import MiniWorld
from vlalign.data.people import PeopleWorld
from vlalign.evaluation.people import evaluate_people_pretraining
from vlalign.evaluation.typographic import evaluate_typographic_phenomena
from vlalign.io import atomic_write_json
from vlalign.models.loading import save_mini_clip
from vlalign.models.mini_clip import MiniCLIP
from vlalign.training.pretrain import PretrainConfig, build_mini_clip, pretrain_clip


def _pretraining_data(config: PretrainConfig) -> tuple[ImageSet, Callable[[MiniCLIP], dict]]:
    """The captioned pretraining images of the config's world and its final evaluation."""
    if config.world_kind == "people":
        people = PeopleWorld(config.people)
        data = people.sample("pretrain", config.n_images, config.seed, workers=config.workers).images
        return data, lambda model: evaluate_people_pretraining(model, people, config.eval_images, config.eval_seed)
    world = MiniWorld(config.world)
    data = world.sample("pretrain", config.n_images, config.seed, workers=config.workers)
    return data, lambda model: evaluate_typographic_phenomena(model, world, config.eval_images, config.eval_seed)


def pretrain_mini_clip(config: PretrainConfig, out: str | Path, progress: bool = True) -> dict[str, float]:
    """Pretrain (resuming from ``out`` if a state is there), then write ``model.safetensors``, ``config.json``,
    ``pretrain_config.json`` and ``metrics.json``."""
    out = Path(out)
    data, evaluate = _pretraining_data(config)
    torch.manual_seed(config.seed)  # the initial weights
    model = pretrain_clip(build_mini_clip(config), data, config, out, progress)
    metrics = evaluate(model.cpu())
    save_mini_clip(model, out)
    atomic_write_json(out / "pretrain_config.json", config_to_dict(config))
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def read_metrics(folder: str | Path) -> dict:
    """The ``metrics.json`` written beside a checkpoint."""
    return json.loads((Path(folder) / "metrics.json").read_text())
