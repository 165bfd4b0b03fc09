"""``vlalign train`` with ``method: adpo``: a MiniVLM folder on the mini world's prompts and a transformers LLaVA built
from a config on an unlabelled image folder, end to end through the CLI; only the vision encoder changes, the
result loads back and plugs into another VLM; bad configs are clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from vlalign.cli import main
from vlalign.config import ConfigError
from vlalign.data.unlabelled import PromptedImageFolder
from vlalign.models.vlm_loading import load_vlm
from vlalign.pipelines.train import load_training_config

from vlm_helpers import tiny_llava_folder, tiny_mini_vlm


def _write(path, config: dict):
    path.write_text(yaml.safe_dump(config))
    return path


def _tensors(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def mini_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adpo_train") / "vlm"
    tiny_mini_vlm(seed=0).save(folder)
    return folder


def test_the_shipped_config_loads():
    config = load_training_config("configs/adpo.yaml")
    assert config.method == "adpo" and config.options.eps == "4/255"
    assert (config.options.attack_on, config.options.attack_objective) == ("policy", "response")


def test_mini_vlm_on_the_mini_world_through_the_cli(mini_folder, tmp_path, capsys):
    torch.set_num_threads(1)
    config = _write(tmp_path / "adpo.yaml", {
        "method": "adpo", "model": str(mini_folder),
        "options": {"loss": "kto", "attack_steps": 2, "eps": "16/255", "max_new_tokens": 4, "attack_on": "policy"},
        "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 2},
        "data": {"questions": 6, "captions": 2}, "eval": {"questions": 6, "steps": 2, "eps": ["4/255"]}})
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "adpo" and metrics["attack_on"] == "policy" and metrics["train"]["steps"] == 2
    assert 0 <= metrics["eval"]["worst_case"]["4/255"] <= metrics["eval"]["clean"] <= 1
    assert set(metrics["eval"]["by_type"]["clean"]) <= {"shape", "colour", "where", "word", "count", "all"}
    before, after = _tensors(mini_folder), _tensors(out)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("vision.") for k in changed)
    assert (out / "report.md").is_file() and (out / "train_config.json").is_file()
    # the hardened encoder goes into another mini VLM on the same tower, decoder untouched
    other = tmp_path / "other"
    tiny_mini_vlm(seed=5).save(other)
    assert main(["transfer", "--encoder", str(out), "--into", str(other), "--out", str(tmp_path / "moved")]) == 0
    moved = _tensors(tmp_path / "moved")
    assert all(torch.equal(moved[k], after[k]) for k in changed)
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--out", str(out)]) == 0
    assert "this run already finished" in capsys.readouterr().out


def test_llava_from_a_config_on_an_image_folder(tmp_path):
    torch.set_num_threads(1)
    llava = tiny_llava_folder(tmp_path / "llava")
    images = tmp_path / "images" / "nested"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images / f"{i}.png")
    config = _write(tmp_path / "adpo.yaml", {
        "method": "adpo", "model": str(llava),
        "options": {"attack_steps": 2, "eps": "16/255", "max_new_tokens": 3, "attack_on": "policy"},
        "train": {"steps": 2, "batch_size": 3, "checkpoint_every": 2, "lr": 1e-3},
        "data": {"path": str(tmp_path / "images"), "prompts": ["describe the image.", "what shape is this?"]},
        "eval": {"questions": 0}})
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out)]) == 0
    assert "eval" not in json.loads((out / "metrics.json").read_text())
    before, after = _tensors(llava), _tensors(out)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("vision_tower" in k for k in changed)
    trained = load_vlm(out)
    unused = trained.unused_vision_parameters()
    assert not any(k.split("vision_tower.", 1)[1].removeprefix("vision_model.") in unused for k in changed)


def test_prompted_folder_cycles_prompts(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    data = PromptedImageFolder(tmp_path, 16, ["a", "b"])
    assert [data[i]["prompt"] for i in range(3)] == ["a", "b", "a"] and data[2]["pixels"].shape == (3, 16, 16)


@pytest.mark.parametrize("fields, message", [
    ({"options": {"attack_on": "decoder"}}, r"bad.yaml: options.attack_on: expected one of"),
    ({"data": {"prompts": []}}, "prompts must be a non-empty list"),
    ({"eval": {"seed": 500}}, "eval.seed must differ from data.seed"),
    ({"options": {"la_schedule": "cosine", "schedule_steps": 10}}, "schedule_steps .10. must equal train.steps"),
])
def test_bad_configs_name_the_field(tmp_path, fields, message):
    config = _write(tmp_path / "bad.yaml", {"method": "adpo", **fields})
    with pytest.raises(ConfigError, match=message):
        load_training_config(config)
