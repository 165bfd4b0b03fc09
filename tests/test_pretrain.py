"""MiniCLIP pretraining end to end on a tiny config: outputs, exact resumption after a crash, NaN losses."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from vlalign.cli import main
from vlalign.config import config_from_dict
from vlalign.models import MiniCLIP, load_model
from vlalign.models.checkpoint import load_tensors
from vlalign.pipelines.pretrain import PretrainConfig, build_mini_clip, pretrain_mini_clip, read_metrics
from vlalign.training.loop import NonFiniteLossError
from vlalign.training.methods import clip_pretrain as pretrain_module
from vlalign.training.state import STATE_META, has_training_state

TINY = {
    "seed": 3, "n_images": 160, "eval_images": 24, "workers": 1,
    "train": {"steps": 4, "batch_size": 32, "checkpoint_every": 2, "warmup_fraction": 0.25, "log_every": 20},
    "world": {"image_size": 32, "min_radius": 5.0, "max_radius": 14.0},
    "model": {"stem_channels": [8, 16], "vision_width": 16, "vision_layers": 1, "vision_heads": 2,
              "text_width": 16, "text_layers": 1, "text_heads": 2, "embed_dim": 8},
}
OUTPUTS = {"model.safetensors", "config.json", "pretrain_config.json", "metrics.json", "metrics.csv"}


def tiny_config(**overrides) -> PretrainConfig:
    return config_from_dict(PretrainConfig, {**TINY, **overrides}, "tiny")


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "run"
    pretrain_mini_clip(tiny_config(), out, progress=False)
    return out


def test_end_to_end_outputs(uninterrupted):
    assert OUTPUTS <= {p.name for p in uninterrupted.iterdir()}
    metrics = read_metrics(uninterrupted)
    assert set(metrics) == {"clean_accuracy", "typographic_accuracy", "matching_accuracy", "nonreading_accuracy",
                            "written_label_rate", "linear_probe"}
    assert all(0 <= v <= 1 for v in metrics.values())
    # The written checkpoint is a MiniCLIP of the configured shape, loadable by the same path users take.
    model = load_model(str(uninterrupted))
    assert isinstance(model, MiniCLIP)
    assert model.config.stem_channels == (8, 16) and model.config.vision_width == 16 and model.embed_dim == 8
    assert model.image_size == 32
    # Training moved the weights away from their seeded initialization.
    torch.manual_seed(3)
    init = build_mini_clip(tiny_config()).state_dict()
    trained = model.state_dict()
    assert not torch.equal(init["visual.head.weight"], trained["visual.head.weight"])
    # The config is written beside the weights and reloads to the same config.
    saved = json.loads((uninterrupted / "pretrain_config.json").read_text())
    assert config_from_dict(PretrainConfig, saved) == tiny_config()


def test_metrics_csv(uninterrupted):
    rows = read_csv(uninterrupted / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [0, 3]  # every 20 steps and the last
    assert set(rows[0]) == {"step", "loss", "lr", "logit_scale"}
    assert all(float(r["loss"]) > 0 for r in rows)
    assert float(rows[-1]["lr"]) < float(rows[0]["lr"])  # warm-up then cosine decay towards zero


class Interrupted(Exception):
    """Stands in for a crash or Ctrl-C in the middle of training."""


def test_resume_after_a_crash_gives_the_uninterrupted_result(tmp_path, uninterrupted, monkeypatch):
    out = tmp_path / "resumed"
    real_loss = pretrain_module.clip_contrastive_loss
    calls = []

    def crash_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # steps 0, 1 ran; state saved at step 2; step 2 ran; crash inside step 3
            raise Interrupted
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "clip_contrastive_loss", crash_at_step_3)
    with pytest.raises(Interrupted):
        pretrain_mini_clip(tiny_config(), out, progress=False)
    assert has_training_state(out / "state")
    assert json.loads((out / "state" / STATE_META).read_text())["step"] == 2
    assert not (out / "model.safetensors").exists()

    monkeypatch.setattr(pretrain_module, "clip_contrastive_loss", real_loss)
    resumed_metrics = pretrain_mini_clip(tiny_config(), out, progress=False)

    expected = load_tensors(uninterrupted / "model.safetensors")
    got = load_tensors(out / "model.safetensors")
    assert set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert resumed_metrics == read_metrics(uninterrupted)
    # The log continues where it stopped: the same rows as the run that never crashed.
    assert read_csv(out / "metrics.csv") == read_csv(uninterrupted / "metrics.csv")


def test_resuming_from_a_later_state_skips_done_steps(tmp_path, monkeypatch):
    """A run killed right after its step-2 checkpoint restarts at step 2, not step 0."""
    out = tmp_path / "run"
    real_loss = pretrain_module.clip_contrastive_loss
    calls = []

    def crash_at_step_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise Interrupted
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "clip_contrastive_loss", crash_at_step_2)
    with pytest.raises(Interrupted):
        pretrain_mini_clip(tiny_config(), out, progress=False)
    calls.clear()

    def counting(*args, **kwargs):
        calls.append(1)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "clip_contrastive_loss", counting)
    pretrain_mini_clip(tiny_config(), out, progress=False)
    assert len(calls) == 2  # steps 2 and 3 only


def test_nan_loss_raises_a_clear_error(tmp_path, monkeypatch):
    real_loss = pretrain_module.clip_contrastive_loss
    monkeypatch.setattr(pretrain_module, "clip_contrastive_loss", lambda *a, **k: real_loss(*a, **k) * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 0 \(loss=nan, logit_scale=.*\); stopped "
                                                 r"before the backward pass, no checkpoint was written.*learning rate"):
        pretrain_mini_clip(tiny_config(), tmp_path, progress=False)
    assert not (tmp_path / "model.safetensors").exists()


def test_pretrain_through_the_cli(tmp_path, capsys, monkeypatch):
    import yaml

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "steps": 1}}))
    assert main(["pretrain-mini", "--config", str(config), "--seed", "4", "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "pretrain_config.json").read_text())["seed"] == 4  # --seed overrides
    assert OUTPUTS <= {p.name for p in (tmp_path / "o").iterdir()}
    # A NaN loss is a user-facing error: exit code 2 and one line.
    real_loss = pretrain_module.clip_contrastive_loss
    monkeypatch.setattr(pretrain_module, "clip_contrastive_loss", lambda *a, **k: real_loss(*a, **k) * float("inf"))
    capsys.readouterr()
    assert main(["pretrain-mini", "--config", str(config), "--out", str(tmp_path / "nan")]) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert last_line.startswith("vlalign pretrain-mini: error: non-finite loss at step 0 (loss=inf")


def test_training_state_is_consistent_after_a_crash_between_its_files(tmp_path, monkeypatch):
    """Weights, optimizer moments, scheduler and step must come from one save, wherever a save is interrupted."""
    from vlalign.training import state as state_module
    from vlalign.training.schedule import warmup_cosine
    from vlalign.training.state import load_training_state, save_training_state

    def setup():
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        return model, optimizer, warmup_cosine(optimizer, 10, 0.2)

    def train_step(model, optimizer, scheduler):
        model(torch.ones(4, 3)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()

    model, optimizer, scheduler = setup()
    train_step(model, optimizer, scheduler)
    save_training_state(tmp_path, model, optimizer, scheduler, 1, config={})
    train_step(model, optimizer, scheduler)
    weights_at_2 = {k: v.clone() for k, v in model.state_dict().items()}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(state_module, "atomic_write_json", crash)  # the tensors are written, the JSON is not
    with pytest.raises(KeyboardInterrupt):
        save_training_state(tmp_path, model, optimizer, scheduler, 2, config={})
    monkeypatch.undo()

    model, optimizer, scheduler = setup()
    meta = load_training_state(tmp_path, model, optimizer, scheduler)
    loaded_step = meta["step"]
    assert scheduler.last_epoch == loaded_step
    assert all(int(s["step"]) == loaded_step for s in optimizer.state.values())
    if loaded_step == 2:
        assert all(torch.equal(v, weights_at_2[k]) for k, v in model.state_dict().items())
    else:
        assert not any(torch.equal(v, weights_at_2[k]) for k, v in model.state_dict().items())


def test_metrics_log_resumes_without_duplicate_rows(tmp_path):
    """Rows logged after the last checkpoint, before a crash, are replaced when the resumed run logs them again."""
    from vlalign.training.metrics_log import MetricsLogger

    logger = MetricsLogger(tmp_path)
    for step in (0, 20, 40):
        logger.log(step, loss=1.0 / (step + 1))
    logger.close()  # crash after step 45; the last checkpoint was at step 30
    logger = MetricsLogger(tmp_path, resume=True)
    for step in (40, 60):
        logger.log(step, loss=2.0)
    logger.close()
    rows = read_csv(tmp_path / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [0, 20, 40, 60]
    assert [float(r["loss"]) for r in rows] == [1.0, 1 / 21, 2.0, 2.0]
    # A fresh (non-resumed) run starts a new file.
    MetricsLogger(tmp_path).log(0, loss=3.0)
    assert [r["loss"] for r in read_csv(tmp_path / "metrics.csv")] == ["3.0"]


def test_continued_pretraining_starts_from_the_init_model(tmp_path):
    """``init`` continues from a saved MiniCLIP: step 0 trains those weights, not fresh ones."""
    from vlalign.models.loading import save_mini_clip
    from vlalign.pipelines.pretrain import initial_model

    torch.manual_seed(11)
    start = build_mini_clip(tiny_config())
    save_mini_clip(start, tmp_path / "start")
    config = tiny_config(init=str(tmp_path / "start"), world={**TINY["world"], "other_word_prob": 0.5, "letters_prob": 0.5})
    loaded = initial_model(config)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), start.state_dict().values()))
    out = tmp_path / "continued"
    pretrain_mini_clip(replace_steps(config, 1), out, progress=False)
    trained = load_model(str(out))
    moved = [not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values())]
    assert any(moved) and trained.config.stem_channels == start.config.stem_channels


def replace_steps(config: PretrainConfig, steps: int) -> PretrainConfig:
    import dataclasses

    return dataclasses.replace(config, train=dataclasses.replace(config.train, steps=steps))


def test_init_must_read_the_worlds_captions(tmp_path):
    from vlalign.models.loading import save_mini_clip
    from vlalign.models.mini_clip import MiniCLIPConfig
    from vlalign.pipelines.pretrain import initial_model

    narrow = MiniCLIP(MiniCLIPConfig(image_size=32, stem_channels=(8, 16), vision_width=16, vision_layers=1,
                                     vision_heads=2, text_width=16, text_layers=1, text_heads=2, embed_dim=8,
                                     vocab=["a", "photo", "of"]))
    save_mini_clip(narrow, tmp_path / "narrow")
    with pytest.raises(ValueError, match=r"init: .*narrow.* does not know the words \[.*'circle'"):
        initial_model(tiny_config(init=str(tmp_path / "narrow")))
    with pytest.raises(ValueError, match="init: 'mini-people' .*does not know"):
        initial_model(tiny_config(init="mini-people"))


def test_resuming_with_other_parameter_groups_names_the_state_file(tmp_path):
    """A state written by a method whose optimizer grouped its parameters otherwise (e.g. before a weight-decay
    exemption) is refused with the file and both groupings, not torch's bare ValueError."""
    from vlalign.errors import CheckpointError
    from vlalign.training.state import load_training_state, save_training_state

    model = torch.nn.Linear(3, 2)
    save_training_state(tmp_path, model, torch.optim.AdamW(model.parameters(), lr=0.1), None, 1, config={})
    regrouped = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias], "weight_decay": 0.0}], lr=0.1)
    with pytest.raises(CheckpointError, match=r"state\.safetensors: the saved optimizer has parameter groups of "
                                              r"\[2\] tensors, this run's has \[1, 1\]"):
        load_training_state(tmp_path, model, regrouped, None)
    same = torch.optim.AdamW(model.parameters(), lr=0.1)
    assert load_training_state(tmp_path, model, same, None)["step"] == 1


def test_a_finished_run_with_an_unreadable_metrics_file_is_evaluated_again(tmp_path, uninterrupted):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    expected = read_metrics(out)
    (out / "metrics.json").write_text("{")
    with pytest.raises(ValueError, match=r"metrics\.json: not valid JSON"):
        read_metrics(out)
    state = (out / "state" / "train_state.safetensors").read_bytes()
    assert pretrain_mini_clip(tiny_config(), out, progress=False) == expected
    assert read_metrics(out) == expected
    assert (out / "state" / "train_state.safetensors").read_bytes() == state  # not trained again
