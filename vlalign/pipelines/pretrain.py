"""``vlalign pretrain-mini``: pretrain a MiniCLIP on its world through the one loop, evaluate it, save it.

``world_kind`` picks the pretraining data: ``shapes`` (the mini world, :mod:`vlalign.data.mini_world`; the
embedded ``mini`` model), ``people`` (the people world, :mod:`vlalign.data.people`; the embedded
``mini-people`` model) or ``retrieval`` (the retrieval world, :mod:`vlalign.data.retrieval_world`). Only the
data, the vocabulary, the caption length and the final evaluation depend on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from vlalign.config import check_range, config_to_dict, option
from vlalign.data.datasets import TensorImageDataset
from vlalign.data.image_set import ImageSet
from vlalign.data.mini_world import MiniWorld, WorldConfig, vocabulary
from vlalign.data.people import PeopleConfig, PeopleWorld, people_vocabulary
from vlalign.data.retrieval_world import RetrievalWorld, RetrievalWorldConfig, retrieval_vocabulary
from vlalign.data.scene_captions import longest_caption_words
from vlalign.data.shapes import SHAPE_NAMES
from vlalign.evaluation.people import evaluate_people_pretraining
from vlalign.evaluation.probe import object_probe
from vlalign.evaluation.retrieval_eval import evaluate_retrieval
from vlalign.evaluation.typographic import evaluate_typographic_phenomena
from vlalign.io import atomic_write_json, read_json
from vlalign.pipelines.runs import read_json_object
from vlalign.reporting.run_report import run_info, write_report
from vlalign.reporting.training import training_report
from vlalign.models.loading import save_mini_clip
from vlalign.models.mini_clip import MiniCLIP, MiniCLIPConfig
from vlalign.training import distributed
from vlalign.training.loop import FitResult, fit
from vlalign.training.methods.clip_pretrain import ContrastivePretraining
from vlalign.training.train_config import TrainConfig


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


def _pretrain_loop() -> TrainConfig:
    return TrainConfig(steps=3000, batch_size=256, lr=1e-3, weight_decay=0.05, warmup_fraction=0.05,
                       checkpoint_every=500, log_every=20)


@dataclass
class PretrainConfig:
    """Everything ``vlalign pretrain-mini`` needs; loaded from YAML and validated."""

    seed: int = option(0, "seed of the pretraining images and of the initial weights")
    n_images: int = option(60000, "captioned pretraining images, rendered once before training")
    eval_images: int = option(1200, "fresh test images per split for the final evaluation")
    eval_seed: int = option(1, "seed of the test images (never the pretraining seed's stream)")
    workers: int = option(2, "processes that render the images; the images do not depend on it")
    world_kind: Literal["shapes", "people", "retrieval"] = option(
        "shapes", "the world: shapes (mini), people (mini-people) or retrieval (image-caption retrieval scenes)")
    world: WorldConfig = option(help="the shapes world's knobs", factory=WorldConfig)
    people: PeopleConfig = option(help="the people world's knobs", factory=PeopleConfig)
    retrieval: RetrievalWorldConfig = option(help="the retrieval world's knobs", factory=RetrievalWorldConfig)
    init: str | None = option(None, "continue pretraining from this MiniCLIP (an embedded name such as 'mini-v1', or a "
                                    "MiniCLIP folder) instead of fresh weights; 'model' is then ignored")
    model: ModelShape = option(help="MiniCLIP architecture (of fresh weights; see init)", factory=ModelShape)
    train: TrainConfig = option(help="loop settings", factory=_pretrain_loop)

    def __post_init__(self) -> None:
        for name in ("n_images", "eval_images", "workers"):
            check_range(name, getattr(self, name), 1)
        if self.train.batch_size > self.n_images:
            raise ValueError(f"train.batch_size {self.train.batch_size} exceeds n_images {self.n_images}")


def world_vocabulary(config: PretrainConfig) -> list[str]:
    """Every word of the config's world's captions and prompts."""
    return {"people": people_vocabulary, "retrieval": retrieval_vocabulary}.get(config.world_kind, vocabulary)()


def build_mini_clip(config: PretrainConfig) -> MiniCLIP:
    """A freshly initialized MiniCLIP for this pretraining config (vocabulary and image size from its world)."""
    shape = config.model
    max_text_length = 16
    vocab = world_vocabulary(config)
    if config.world_kind == "people":
        image_size = config.people.image_size
    elif config.world_kind == "retrieval":
        image_size = config.retrieval.image_size
        max_text_length = longest_caption_words(image_size) + 2  # <bos> … <eos>
    else:
        image_size = config.world.image_size
    return MiniCLIP(MiniCLIPConfig(
        image_size=image_size if shape.image_size is None else shape.image_size, stem_channels=tuple(shape.stem_channels), vision_width=shape.vision_width,
        vision_layers=shape.vision_layers, vision_heads=shape.vision_heads, text_width=shape.text_width,
        text_layers=shape.text_layers, text_heads=shape.text_heads, embed_dim=shape.embed_dim, vocab=vocab,
        init_temperature=shape.init_temperature, max_text_length=max_text_length,
    ))


def initial_model(config: PretrainConfig) -> MiniCLIP:
    """Fresh weights per ``config.model``, or the MiniCLIP named by ``config.init``, checked to read every word of
    the world's captions (a word outside its vocabulary would silently become ``<unk>``)."""
    if config.init is None:
        return build_mini_clip(config)
    from vlalign.models.loading import load_model

    model = load_model(config.init)
    if not isinstance(model, MiniCLIP):
        raise ValueError(f"init: {config.init!r} is a {type(model).__name__}; continued pretraining needs a MiniCLIP")
    missing = sorted(set(world_vocabulary(config)) - set(model.config.vocab))
    if missing:
        raise ValueError(f"init: {config.init!r} does not know the words {missing} of the {config.world_kind} world's captions")
    return model


def _pretraining_data(config: PretrainConfig) -> tuple[ImageSet, Callable[[MiniCLIP], dict]]:
    """The captioned pretraining images of the config's world and its final evaluation."""
    if config.world_kind == "retrieval":
        return _retrieval_pretraining_data(config)
    if config.world_kind == "people":
        people = PeopleWorld(config.people)
        data = people.sample("pretrain", config.n_images, config.seed, workers=config.workers).images
        return data, lambda model: evaluate_people_pretraining(model, people, config.eval_images, config.eval_seed)
    world = MiniWorld(config.world)
    data = world.sample("pretrain", config.n_images, config.seed, workers=config.workers)
    return data, lambda model: evaluate_shapes_pretraining(model, world, config.eval_images, config.eval_seed)


def evaluate_shapes_pretraining(model: MiniCLIP, world: MiniWorld, n: int, seed: int) -> dict[str, float]:
    """The final evaluation of a mini-world MiniCLIP: zero-shot accuracy on clean, typographic, matching and
    non-reading-control images (``n`` each, ``seed``), the written-label rate, and ``linear_probe``: the object
    probe's accuracy on frozen typographic features (trained on ``n`` images of seed ``7100 + seed``, tested on
    ``n`` of seed ``7200 + seed``; see :func:`vlalign.evaluation.probe.object_probe`)."""
    metrics = evaluate_typographic_phenomena(model, world, n, seed)
    probe = object_probe(model, world, splits=("typographic",), n_train=n, n_test=n, train_seed=7100 + seed,
                         test_seed=7200 + seed)
    return {**metrics, "linear_probe": probe["typographic"]["probe"]}


def _retrieval_pretraining_data(config: PretrainConfig) -> tuple[ImageSet, Callable[[MiniCLIP], dict]]:
    """Retrieval-world training images with one of their five captions each (a different template per image,
    so every template is seen), and clean Recall@k on a fresh test gallery as the final evaluation."""
    world = RetrievalWorld(config.retrieval)
    train = world.sample("train", config.n_images, config.seed, workers=config.workers)
    pick = np.random.default_rng([config.seed, 31]).integers(0, config.retrieval.captions_per_image, len(train))
    first_shapes = [SHAPE_NAMES.index(scene.objects[0].shape) for scene in train.scenes]
    data = ImageSet(train.images, torch.tensor(first_shapes), SHAPE_NAMES,
                    captions=[captions[int(k)] for captions, k in zip(train.captions, pick)])

    def evaluate(model: MiniCLIP) -> dict:
        test = world.sample("test", config.eval_images, config.eval_seed, workers=config.workers)
        recall = evaluate_retrieval(model, test)
        flat = {f"test_{d}_{k}": v for d in ("i2t", "t2i") for k, v in recall[d].items()}
        return {**flat, "test_mR": recall["mR"], "test_images": len(test)}

    return data, evaluate


def pretrain(config: PretrainConfig, out: str | Path, progress: bool = True, overwrite: bool = False
             ) -> tuple[MiniCLIP, FitResult, Callable[[MiniCLIP], dict]]:
    """Pretrain a MiniCLIP per ``config`` through :func:`fit` (checkpoints in ``out/state``; resumes)."""
    data, evaluate = _pretraining_data(config)
    torch.manual_seed(config.seed)  # the initial weights
    model = initial_model(config)
    method = ContrastivePretraining(model, TensorImageDataset(data.images, caption=data.captions))
    run = {k: v for k, v in config_to_dict(config).items() if k not in ("train", "workers", "eval_images", "eval_seed")}
    result = fit(method, config.train, out, run_config={"pretrain": run}, progress=progress, overwrite=overwrite)
    return result.model, result, evaluate


def pretrain_mini_clip(config: PretrainConfig, out: str | Path, progress: bool = True,
                       overwrite: bool = False) -> dict[str, float]:
    """Pretrain (resuming from ``out`` if a state is there), then write ``model.safetensors``, ``config.json``,
    ``pretrain_config.json`` and ``metrics.json``."""
    began = time.perf_counter()
    out = Path(out)
    model, result, evaluate = pretrain(config, out, progress, overwrite)
    saved = read_json_object(out / "metrics.json")  # {} when missing or unreadable: then evaluated again
    if result.already_finished and saved and _same_evaluation(out, config):
        return saved  # else evaluated again with the new eval_images / eval_seed, not trained
    if distributed.rank() != 0:  # under accelerate launch only the main process evaluates and writes
        return {}
    metrics = evaluate(model.cpu())
    save_mini_clip(model, out)
    # metrics.json first: if the run stops between the two writes, the config still holds the earlier eval settings,
    # so the next run evaluates again instead of reporting stale metrics.
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "pretrain_config.json", config_to_dict(config))
    write_report(out, "pretrain", training_report(out), run_info(seconds=time.perf_counter() - began))
    return metrics


def _same_evaluation(out: Path, config: PretrainConfig) -> bool:
    """Whether the finished run in ``out`` was evaluated with ``config``'s eval_images and eval_seed."""
    saved = read_json_object(out / "pretrain_config.json")
    return all(k in saved and saved[k] == getattr(config, k) for k in ("eval_images", "eval_seed"))


def read_metrics(folder: str | Path) -> dict:
    """The ``metrics.json`` written beside a checkpoint (a ``ValueError`` names the file when it is missing or
    not a JSON object)."""
    return read_json(Path(folder) / "metrics.json", expect=dict)
