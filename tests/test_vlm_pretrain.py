"""VLM pretraining: the language-modelling loss, the Method module (stages, feature cache, streams), and the
``pretrain-vlm`` pipeline and command on a tiny tower."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import default_collate

from vlalign.cli import main
from vlalign.config import config_from_dict
from vlalign.data.vqa import MiniCaptions, MiniVQA
from vlalign.losses.language import language_modeling_loss
from vlalign.models.loading import save_mini_clip
from vlalign.models.mini_clip import MiniCLIP, MiniCLIPConfig
from vlalign.models.mini_vlm import load_mini_vlm
from vlalign.pipelines.pretrain_vlm import PretrainVLMConfig, pretrain_vlm
from vlalign.training.methods.vlm_pretrain import IndexDataset, VLMPretrainMethod

from vlm_helpers import TINY_TOWER, tiny_mini_vlm


def test_language_modeling_loss_is_token_mean_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, dtype=torch.float64)
    targets = torch.randint(0, 11, (3, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    per_token = F.log_softmax(logits, -1).gather(2, targets[..., None]).squeeze(-1)
    per_token = per_token.masked_fill(~mask, float("-inf"))  # padding may hold anything
    expected = F.cross_entropy(logits.reshape(-1, 11), targets.masked_fill(~mask, -100).reshape(-1), ignore_index=-100)
    torch.testing.assert_close(language_modeling_loss(per_token, mask), expected)
    with pytest.raises(ValueError, match="no scored tokens"):
        language_modeling_loss(per_token, torch.zeros_like(mask))


@pytest.fixture
def data():
    return {"qa": MiniVQA(12, seed=1), "caption": MiniCaptions(6, seed=1)}


def _direct_loss(model, datasets, batch):
    terms = []
    for name, part in batch.items():
        items = [datasets[name][i] for i in part["index"].tolist()]
        key = "answer" if name == "qa" else "caption"
        pixels = torch.stack([item["pixels"] for item in items]).float() / 255
        scores = model.response_logprobs(pixels, [item["prompt"] for item in items], [item[key] for item in items])
        terms.append(language_modeling_loss(scores.per_token, scores.mask))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("cache", [True, False])
def test_forward_is_the_mean_of_the_streams_response_nll(data, cache):
    model = tiny_mini_vlm()
    method = VLMPretrainMethod(model, data, cache_features=cache, cache_dtype=torch.float32, cache_batch_size=5)
    method.prepare(torch.device("cpu"))
    streams = method.streams()
    assert isinstance(streams["qa"].dataset, IndexDataset) == cache
    batch = {name: default_collate([stream.dataset[i] for i in (0, 3, 5)]) for name, stream in streams.items()}
    out = method(batch)
    with torch.no_grad():
        expected = _direct_loss(model, data, batch)
    torch.testing.assert_close(out["loss"].detach(), expected, atol=1e-5, rtol=1e-5)
    assert set(out) == {"loss", "qa_nll", "caption_nll"}


def test_stages_train_projector_then_decoder_and_never_the_tower(data):
    model = tiny_mini_vlm()
    method = VLMPretrainMethod(model, data, stage="projector")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith("projector.")}
    method.set_stage("full")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(("projector.", "language_model."))}
    assert method.trainable_module() is model
    with pytest.raises(ValueError, match="stage must be"):
        method.set_stage("vision")


def test_a_few_optimizer_steps_lower_the_loss(data):
    torch.manual_seed(0)
    model = tiny_mini_vlm(init_std=0.02)
    method = VLMPretrainMethod(model, data, batch_sizes={"caption": 4})
    method.prepare(torch.device("cpu"))
    streams = method.streams()
    assert streams["caption"].batch_size == 4 and streams["qa"].batch_size is None
    batch = {name: default_collate([stream.dataset[i] for i in range(4)]) for name, stream in streams.items()}
    optimizer = torch.optim.AdamW(method.param_groups(0.0), lr=1e-2)
    losses = []
    for _ in range(25):
        out = method(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < 0.5 * losses[0]
    frozen = tiny_mini_vlm(init_std=0.02)
    for name, tensor in model.vision.state_dict().items():
        assert torch.equal(tensor, frozen.vision.state_dict()[name])
    finished = method.finish()
    assert finished is model and not finished.training and not any(p.requires_grad for p in model.parameters())


def test_method_errors(data):
    model = tiny_mini_vlm()
    method = VLMPretrainMethod(model, data)
    with pytest.raises(RuntimeError, match="prepare"):
        method({"qa": {"index": torch.tensor([0])}, "caption": {"index": torch.tensor([0])}})
    with pytest.raises(ValueError, match="unknown streams"):
        VLMPretrainMethod(model, data, batch_sizes={"captions": 4})
    with pytest.raises(ValueError, match="items need"):
        VLMPretrainMethod(model, {"bad": IndexDataset(3)})


@pytest.fixture
def tiny_tower(tmp_path):
    torch.manual_seed(0)
    clip = MiniCLIP(MiniCLIPConfig(**TINY_TOWER, vocab=["a", "circle"]))
    save_mini_clip(clip, tmp_path / "tower")
    return tmp_path / "tower"


def _tiny_config(tower, **overrides) -> dict:
    loop = dict(batch_size=6, checkpoint_every=2, log_every=1)
    config = dict(tower=str(tower), model=dict(hidden_size=32, layers=1, heads=2, intermediate_size=64),
                  data=dict(qa_items=30, caption_items=8, caption_batch_size=4),
                  projector=dict(loop, steps=2), full=dict(loop, steps=3, seed=1),
                  eval=dict(questions=10, captions=4, attack_questions=5, attack_steps=2),
                  threads=1, workers=0, progress=False)
    config.update(overrides)
    return config


def test_pipeline_writes_a_loadable_model_metrics_and_report(tiny_tower, tmp_path):
    metrics = pretrain_vlm(config_from_dict(PretrainVLMConfig, _tiny_config(tiny_tower)), tmp_path / "out")
    model = load_mini_vlm(tmp_path / "out")
    assert torch.equal(model.vision.pos, load_tower_pos(tiny_tower))  # the tower stayed frozen
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["exact_match"].keys() == {"shape", "colour", "where", "word", "count", "all"}
    assert saved["robust"]["eps"] == "4/255" and saved["robust"]["n"] == 5
    assert {"data_and_features", "projector_step", "full_step", "pretraining_total", "evaluation"} <= set(saved["seconds"])
    assert metrics["cider"] == saved["cider"]
    assert json.loads((tmp_path / "out" / "pretrain_config.json").read_text())["data"]["qa_items"] == 30
    # each stage is a run of the one loop in its own folder, logging every step
    for stage, steps in (("stage1_projector", 2), ("stage2_full", 3)):
        assert len((tmp_path / "out" / stage / "metrics.csv").read_text().splitlines()) == 1 + steps
        assert (tmp_path / "out" / stage / "state").is_dir()
    assert "Mini VLM pretraining" in (tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "stage2_full_curves.png").is_file()
    # a finished run is neither trained nor evaluated again
    again = pretrain_vlm(config_from_dict(PretrainVLMConfig, _tiny_config(tiny_tower)), tmp_path / "out")
    assert again == saved


def test_an_interrupted_pretraining_resumes_bit_identically(tiny_tower, tmp_path, monkeypatch):
    config = config_from_dict(PretrainVLMConfig, _tiny_config(tiny_tower, eval=dict(questions=4, captions=2,
                                                                                     attack_questions=0)))
    pretrain_vlm(config, tmp_path / "a")
    real = VLMPretrainMethod.forward
    calls = []

    def forward(self, batch):  # stop in stage 2 at its step 2 (after the checkpoint of step 2)
        calls.append(self.stage)
        if self.stage == "full" and batch["step"] == 2:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(VLMPretrainMethod, "forward", forward)
    with pytest.raises(KeyboardInterrupt, match="interrupted at step 2"):
        pretrain_vlm(config, tmp_path / "b")
    monkeypatch.setattr(VLMPretrainMethod, "forward", real)
    assert not (tmp_path / "b" / "model.safetensors").exists()
    pretrain_vlm(config, tmp_path / "b")
    a, b = load_mini_vlm(tmp_path / "a").state_dict(), load_mini_vlm(tmp_path / "b").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    for stage in ("stage1_projector", "stage2_full"):
        assert (tmp_path / "a" / stage / "metrics.csv").read_text() == (tmp_path / "b" / stage / "metrics.csv").read_text()


def test_a_changed_stage_1_refuses_to_resume_stage_2(tiny_tower, tmp_path):
    from vlalign.config import ConfigError

    config = _tiny_config(tiny_tower, eval=dict(questions=4, captions=2, attack_questions=0))
    pretrain_vlm(config_from_dict(PretrainVLMConfig, config), tmp_path / "a")
    changed = dict(config, projector=dict(config["projector"], lr=0.5))
    with pytest.raises(ConfigError, match="another config"):
        pretrain_vlm(config_from_dict(PretrainVLMConfig, changed), tmp_path / "a")


def load_tower_pos(folder):
    from vlalign.models.loading import load_mini_clip

    return load_mini_clip(folder).visual.pos


def test_command_reads_yaml_and_overrides(tiny_tower, tmp_path, capsys):
    config = _tiny_config("mini", eval=dict(questions=10, captions=4, attack_questions=0))
    config.pop("progress")
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["pretrain-vlm", "--config", str(path), "--tower", str(tiny_tower), "--out", str(tmp_path / "cli")]) == 0
    assert "CIDEr-D" in capsys.readouterr().out
    assert json.loads((tmp_path / "cli" / "pretrain_config.json").read_text())["tower"] == str(tiny_tower)
    assert main(["report", str(tmp_path / "cli")]) == 0
    path.write_text(yaml.safe_dump({**config, "eval": {"seed": 100}}))
    assert main(["pretrain-vlm", "--config", str(path), "--out", str(tmp_path / "bad")]) == 2
    assert "eval.seed must differ from data.seed" in capsys.readouterr().err
    path.write_text(yaml.safe_dump({**config, "data": {"qa_types": ["shape", "count"]}}))
    assert main(["pretrain-vlm", "--config", str(path), "--out", str(tmp_path / "bad")]) == 2
    assert "qa_types must list every question type" in capsys.readouterr().err
    path.write_text(yaml.safe_dump({**config, "full": {"stepz": 3}}))
    assert main(["pretrain-vlm", "--config", str(path), "--out", str(tmp_path / "bad")]) == 2
    assert "full.stepz" in capsys.readouterr().err


def test_shipped_configs_load():
    from vlalign.config import load_config

    for name, hidden in (("pretrain_vlm", 128), ("pretrain_vlm_large", 192)):
        config = load_config(f"configs/{name}.yaml", PretrainVLMConfig)
        assert config.model.hidden_size == hidden and config.full.steps >= 1000
