"""``vlalign train`` with ``method: advlora``: a MiniCLIP folder and a transformers CLIP built from a config, each
fine-tuned through the CLI on a Karpathy-split JSON with its image root (the way a user points a config at COCO);
the merged model loads back as a plain model of its backend whose outputs equal the saved peft adapter applied to
the base model; the retrieval world is the default data; bad configs are clear errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from vlalign.cli import main
from vlalign.config import ConfigError
from vlalign.data.karpathy import export_karpathy
from vlalign.data.retrieval_world import RetrievalWorld, retrieval_vocabulary
from vlalign.data.scene_captions import longest_caption_words
from vlalign.models.adapters import load_peft_adapter
from vlalign.models.loading import load_model, save_model
from vlalign.models.mini_clip import MiniCLIP, MiniCLIPConfig
from vlalign.pipelines.train import load_training_config


def _write(path, config: dict):
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def karpathy(tmp_path_factory):
    """A Karpathy-split JSON of 12 training and 10 test retrieval-world images, with its image root."""
    world = RetrievalWorld()
    folder = tmp_path_factory.mktemp("karpathy")
    path = export_karpathy({"train": world.sample("train", 12, seed=3), "test": world.sample("test", 10, seed=4)},
                           folder)
    return path, folder


@pytest.fixture(scope="module")
def mini_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = MiniCLIP(MiniCLIPConfig(image_size=32, stem_channels=(8, 16, 32), vision_width=32, vision_layers=1,
                                    vision_heads=2, text_width=32, text_layers=1, text_heads=2, embed_dim=16,
                                    vocab=retrieval_vocabulary(), max_text_length=longest_caption_words() + 2))
    folder = tmp_path_factory.mktemp("advlora_train") / "mini"
    save_model(model.eval(), folder)
    return folder


def _images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _features(model) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_image(_images())


def test_the_shipped_config_loads():
    config = load_training_config("configs/advlora.yaml")
    assert config.method == "advlora" and config.options.trainable == "advlora" and config.options.rank == 5
    assert config.options.alpha_lr_scale == 0.0025 and config.train.lr == 0.04 and config.data.path is None


def test_the_mode_decides_the_parts_a_config_leaves_out(tmp_path):
    parts = lambda options: (options.cluster_init, options.adaptive_alpha, options.alignment_weight)  # noqa: E731
    lora = load_training_config(_write(tmp_path / "lora.yaml", {"method": "advlora", "options": {"trainable": "lora"}}))
    assert parts(lora.options) == (False, False, 0.0)
    default = load_training_config(_write(tmp_path / "default.yaml", {"method": "advlora"}))
    assert parts(default.options) == (True, True, 0.1)


def _run(tmp_path, model: str, karpathy, options: dict, evaluation: dict | None = None) -> tuple:
    json_path, root = karpathy
    config = _write(tmp_path / "advlora.yaml", {
        "method": "advlora", "model": model, "options": {"rank": 2, "attack_steps": 1, **options},
        "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 2, "lr": 1e-2},
        "data": {"path": str(json_path), "image_root": str(root)},
        "eval": {"images": 10, "steps": 1, "attack_batch": 5, "eps": ["2/255", "4/255"], **(evaluation or {})}})
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out)]) == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_advlora_on_a_karpathy_json_through_the_cli(mini_folder, karpathy, tmp_path):
    torch.set_num_threads(1)
    out, metrics = _run(tmp_path, str(mini_folder), karpathy, {"image_targets": ["stem.0", "stem.3"]})
    assert metrics["trainable"] == "advlora" and metrics["train"]["steps"] == 2
    assert 0 < metrics["trainable_fraction"] < 0.2 and metrics["alpha_mean"] is not None
    evaluation = metrics["eval"]
    assert evaluation["images"] == 10 and set(evaluation["pgd"]) == {"2/255", "4/255"}
    for recall in (evaluation["clean"], *evaluation["pgd"].values()):
        assert set(recall) >= {"i2t", "t2i", "mR"} and 0 <= recall["mR"] <= 1
    base, merged = load_model(mini_folder), load_model(out)
    assert type(merged) is MiniCLIP
    assert float((_features(merged) - _features(base)).abs().max()) > 1e-6  # it trained
    restored = load_peft_adapter(copy.deepcopy(base), out / "peft")
    torch.testing.assert_close(_features(restored), _features(merged), atol=1e-5, rtol=0)
    # A second call finds the finished run and only reports it.
    assert main(["train", "--config", str(tmp_path / "advlora.yaml"), "--out", str(out)]) == 0
    assert metrics["peft_adapter"] == "peft"
    # Trained again with BMA: the average of merged weights is no rank-r adapter, so the folder keeps none (the
    # earlier run's adapter would not be this model's).
    settings = yaml.safe_load((tmp_path / "advlora.yaml").read_text())
    settings["train"]["averaging"] = "bma"
    config = _write(tmp_path / "advlora_bma.yaml", settings)
    assert main(["train", "--config", str(config), "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "metrics.json").read_text())["peft_adapter"] is None and not (out / "peft").exists()


def test_plain_lora_on_a_transformers_clip_from_a_config(karpathy, tmp_path):
    pytest.importorskip("transformers")
    from test_hf_clip import tiny_clip_model, tiny_tokenizer

    from vlalign.models.hf_clip import HFCLIP

    torch.set_num_threads(1)
    tokenizer = tiny_tokenizer()
    base = HFCLIP(tiny_clip_model(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id), tokenizer,
                  (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), resize_to=32, crop_size=32).eval()
    base.save_pretrained(tmp_path / "clip")
    out, metrics = _run(tmp_path, str(tmp_path / "clip"), karpathy, {"trainable": "lora"})
    assert metrics["trainable"] == "lora" and metrics["alpha_mean"] is None
    merged = load_model(out)
    assert type(merged) is HFCLIP
    restored = load_peft_adapter(copy.deepcopy(load_model(tmp_path / "clip")), out / "peft")
    torch.testing.assert_close(_features(restored), _features(merged), atol=1e-5, rtol=0)


def test_a_blip_from_a_config_reports_itm_reranked_recall(karpathy, tmp_path):
    pytest.importorskip("transformers")
    from test_hf_blip import tiny_bert_tokenizer, tiny_blip

    from vlalign.data.karpathy import load_karpathy_split
    from vlalign.evaluation.retrieval_eval import itm_reranked_recall
    from vlalign.models.hf_blip import HFBlip

    torch.set_num_threads(1)
    tiny_blip(tiny_bert_tokenizer()).save_pretrained(tmp_path / "blip")
    out, metrics = _run(tmp_path, str(tmp_path / "blip"), karpathy, {"trainable": "lora"}, {"itm_rerank": 10})
    merged = load_model(out)
    assert type(merged) is HFBlip
    json_path, root = karpathy
    gallery = load_karpathy_split(json_path, root, "test", merged.image_size, n=10)
    # the saved model re-ranks the saved gallery as the run reported (every candidate of 10 images re-scored by ITM)
    expected = itm_reranked_recall(merged, gallery, k=10)
    assert metrics["eval"]["itm_reranked"]["mR"] == pytest.approx(expected["mR"], abs=1e-6)
    assert set(metrics["eval"]["itm_reranked"]) >= {"i2t", "t2i", "mR"}


def test_itm_reranking_without_an_itm_head_fails_before_training(mini_folder, karpathy, tmp_path, capsys):
    json_path, root = karpathy
    config = _write(tmp_path / "advlora.yaml", {"method": "advlora", "model": str(mini_folder),
                                                "data": {"path": str(json_path), "image_root": str(root)},
                                                "eval": {"images": 10, "itm_rerank": 10}})
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) != 0
    assert "eval.itm_rerank" in capsys.readouterr().err
    assert not (tmp_path / "run" / "state").exists()


@pytest.mark.parametrize("fields, message", [
    ({"data": {"path": "x.json"}}, "image_root is required with path"),
    ({"data": {"path": "x.json", "image_root": "."}, "eval": {"split": "train"}}, "eval.split must differ"),
    ({"data": {"seed": 2}}, "eval.seed must differ from data.seed"),
    ({"eval": {"eps": ["2/25x"]}}, "2/25x"),
    ({"eval": {"images": 5}}, "images must be 0 or at least 10"),
    ({"eval": {"itm_rerank": 5}}, "itm_rerank must be 0 or at least 10"),
    ({"options": {"trainable": "lora", "alignment_weight": 0.1}}, "AdvLoRA parts"),
])
def test_bad_configs_name_the_field(tmp_path, fields, message):
    path = _write(tmp_path / "bad.yaml", {"method": "advlora", **fields})
    with pytest.raises(ConfigError, match=message):
        load_training_config(path)


def test_a_missing_karpathy_image_is_a_clear_error(karpathy, mini_folder, tmp_path, capsys):
    json_path, _ = karpathy
    root = tmp_path / "images"  # a folder without the JSON's images (the output may not lie inside it)
    root.mkdir()
    config = _write(tmp_path / "advlora.yaml", {"method": "advlora", "model": str(mini_folder),
                                                "data": {"path": str(json_path), "image_root": str(root)}})
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) != 0
    assert "not found under" in capsys.readouterr().err
