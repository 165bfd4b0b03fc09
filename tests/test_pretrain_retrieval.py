"""MiniCLIP pretraining on the retrieval world (world_kind: retrieval): model shape, data and final evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlalign.config import load_config
from vlalign.data.retrieval_world import RetrievalWorldConfig, retrieval_vocabulary
from vlalign.data.scene_captions import longest_caption_words
from vlalign.models.loading import load_model
from vlalign.pipelines.pretrain import ModelShape, PretrainConfig, _pretraining_data, build_mini_clip, pretrain_mini_clip
from vlalign.training.train_config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_config(**kwargs) -> PretrainConfig:
    shape = ModelShape(image_size=32, stem_channels=[8, 16, 32], vision_width=32, vision_layers=1, vision_heads=2,
                       text_width=32, text_layers=1, text_heads=2, embed_dim=16)
    return PretrainConfig(world_kind="retrieval", n_images=40, eval_images=12, workers=1, model=shape,
                          train=TrainConfig(steps=2, batch_size=8, checkpoint_every=1), **kwargs)


def test_the_shipped_config_loads_and_builds_a_retrieval_miniclip():
    config = load_config(CONFIGS / "pretrain_retrieval.yaml", PretrainConfig)
    assert config.world_kind == "retrieval" and config.eval_images == 1000 and config.train.lr == 5e-4
    model = build_mini_clip(config)
    assert model.config.vocab == retrieval_vocabulary()
    assert model.config.max_text_length == longest_caption_words() + 2
    assert model.config.image_size == 48


def test_training_pairs_each_image_with_one_of_its_captions():
    config = tiny_config(retrieval=RetrievalWorldConfig(word_prob=0.3))
    data, _ = _pretraining_data(config)
    from vlalign.data.retrieval_world import RetrievalWorld

    world = RetrievalWorld(config.retrieval).sample("train", 40, seed=0)
    assert torch.equal(data.images, world.images)
    assert all(c in options for c, options in zip(data.captions, world.captions))
    assert len({options.index(c) for c, options in zip(data.captions, world.captions)}) > 1  # templates vary


def test_pretraining_end_to_end_reports_recall_on_a_fresh_test_gallery(tmp_path):
    metrics = pretrain_mini_clip(tiny_config(), tmp_path, progress=False)
    assert metrics["test_images"] == 12
    assert set(metrics) == {"test_images", "test_mR", *(f"test_{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10))}
    recalls = [metrics[f"test_{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
    assert metrics["test_mR"] == pytest.approx(sum(recalls) / 6)
    model = load_model(tmp_path)
    assert model.tokenizer.unknown_words(["a small red star to the left of a large blue circle"]) == []
