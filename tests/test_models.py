"""MiniCLIP, its tokenizer, checkpoints (round trip, architecture checks, atomic writes) and load_model."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest
import torch

from vlalign.data.mini_world import vocabulary
from vlalign.models import CheckpointError, MiniCLIP, MiniCLIPConfig, load_mini_clip, load_model, save_mini_clip
from vlalign import io as io_module
from vlalign.models.checkpoint import load_state_checked, load_tensors
from vlalign.io import atomic_write_bytes, atomic_write_json, save_tensors
from vlalign.models.tokenizer import BOS, EOS, PAD, UNK, WordTokenizer, split_words

TEXTS = ["a photo of a star", "a large red circle on a noisy background", "the word moon", "a"]


def pixels(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- embeddings -----------------------------------------------------------------------------------------------

def test_embeddings_are_normalized(tiny_mini_clip):
    with torch.no_grad():
        image = tiny_mini_clip.encode_image(pixels(5))
        text = tiny_mini_clip.encode_text(TEXTS)
        raw = tiny_mini_clip.encode_image(pixels(5), normalize=False)
    assert image.shape == (5, 16) and text.shape == (4, 16)
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(raw / raw.norm(dim=-1, keepdim=True), image)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(5))


def test_image_batch_equals_one_by_one(tiny_mini_clip):
    x = pixels(6)
    with torch.no_grad():
        batch = tiny_mini_clip.encode_image(x)
        single = torch.cat([tiny_mini_clip.encode_image(x[i: i + 1]) for i in range(6)])
    assert (batch - single).abs().max() < 1e-5


def test_text_batch_equals_one_by_one(tiny_mini_clip):
    # Texts of different lengths: padding must be masked out, or the short texts' embeddings change in a batch.
    with torch.no_grad():
        batch = tiny_mini_clip.encode_text(TEXTS)
        single = torch.cat([tiny_mini_clip.encode_text([t]) for t in TEXTS])
    assert (batch - single).abs().max() < 1e-5
    assert (batch[0] - batch[1]).abs().max() > 1e-3  # different texts, different embeddings


def test_shipped_model_batch_consistency(mini_model, world):
    images = world.sample("typographic", 4, seed=99).pixels()
    with torch.no_grad():
        batch = mini_model.encode_image(images)
        single = torch.cat([mini_model.encode_image(images[i: i + 1]) for i in range(4)])
    assert (batch - single).abs().max() < 1e-5


def test_pixel_gradient_and_resizing(tiny_mini_clip):
    x = pixels(2, size=48).requires_grad_(True)  # the model resizes to its 32 px inside
    out = tiny_mini_clip.encode_image(x)
    assert out.shape == (2, 16)
    out.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    with torch.no_grad():
        small = torch.nn.functional.interpolate(x.detach(), size=(32, 32), mode="bilinear", antialias=True)
        torch.testing.assert_close(tiny_mini_clip.encode_image(small), out.detach(), atol=1e-5, rtol=0)


def test_similarity_logits_and_logit_scale(tiny_mini_clip):
    assert float(tiny_mini_clip.logit_scale.detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        img, txt = tiny_mini_clip.encode_image(pixels(3)), tiny_mini_clip.encode_text(TEXTS)
        logits = tiny_mini_clip.similarity_logits(img, txt)
        torch.testing.assert_close(logits, tiny_mini_clip.logit_scale * img @ txt.t())
        tiny_mini_clip.log_logit_scale.fill_(10.0)
        assert float(tiny_mini_clip.logit_scale) == pytest.approx(100.0)  # clamped as in CLIP


def test_encode_text_rejects_a_bare_string_and_empty_list(tiny_mini_clip):
    with pytest.raises(TypeError, match="list of strings"):
        tiny_mini_clip.encode_text("a star")
    with pytest.raises(ValueError, match="empty list"):
        tiny_mini_clip.encode_text([])


def test_towers_partition_the_parameters(tiny_mini_clip):
    image_ids = {id(p) for p in tiny_mini_clip.image_parameters()}
    text_ids = {id(p) for p in tiny_mini_clip.text_parameters()}
    all_ids = {id(p) for p in tiny_mini_clip.parameters()}
    assert image_ids and text_ids and not image_ids & text_ids
    assert all_ids - image_ids - text_ids == {id(tiny_mini_clip.log_logit_scale)}


@pytest.mark.parametrize("overrides, message", [
    ({"image_size": 36}, "divisible by 2\\*\\*3"),
    ({"vision_heads": 3}, "vision_width 32 must be divisible by vision_heads 3"),
    ({"stem_channels": (8, 16, 24)}, "must equal vision_width"),
    ({"init_temperature": 1.5}, "init_temperature"),
])
def test_config_validation(overrides, message):
    base = dict(image_size=32, stem_channels=(8, 16, 32), vision_width=32, vision_heads=2, vocab=["a"])
    with pytest.raises(ValueError, match=message):
        MiniCLIPConfig(**{**base, **overrides})


def test_empty_vocabulary_is_rejected():
    with pytest.raises(ValueError, match="vocab is empty"):
        MiniCLIP(MiniCLIPConfig())


# --- tokenizer ------------------------------------------------------------------------------------------------

def test_tokenizer_layout_and_unknown_words():
    tok = WordTokenizer(["star", "a", "photo", "of"], max_length=8)
    assert tok.vocab[:4] == [PAD, UNK, BOS, EOS]
    out = tok(["A photo of a STAR!", "a zebra-crossing star"])
    ids, mask = out["input_ids"], out["attention_mask"]
    i = tok.index
    assert ids[0].tolist() == [i[BOS], i["a"], i["photo"], i["of"], i["a"], i["star"], i[EOS], i[PAD]]
    assert mask[0].tolist() == [1, 1, 1, 1, 1, 1, 1, 0]
    assert ids[1, :4].tolist() == [i[BOS], i["a"], i[UNK], i["star"]]  # unknown word -> <unk>, one token
    assert tok.unknown_words(["a zebra-crossing star", "the"]) == ["the", "zebra-crossing"]


def test_tokenizer_truncates_long_texts_keeping_eos():
    tok = WordTokenizer(["a"], max_length=5)
    out = tok([" ".join(["a"] * 50), ""])
    assert out["input_ids"][0].tolist() == [tok.index[BOS]] + [tok.index["a"]] * 3 + [tok.index[EOS]]
    assert out["attention_mask"][0].tolist() == [1] * 5
    assert out["input_ids"][1, :2].tolist() == [tok.index[BOS], tok.index[EOS]]
    assert out["attention_mask"][1].tolist() == [1, 1, 0, 0, 0]


def test_tokenizer_validation_and_from_texts():
    with pytest.raises(ValueError, match="duplicate"):
        WordTokenizer(["a", "a"])
    with pytest.raises(ValueError, match="max_length"):
        WordTokenizer(["a"], max_length=2)
    tok = WordTokenizer.from_texts(["b a", "c, a."])
    assert tok.vocab == [PAD, UNK, BOS, EOS, "a", "b", "c"]
    assert split_words("Hello, World-2!") == ["hello", "world-2"]


def test_model_encodes_unknown_and_long_texts(tiny_mini_clip):
    long_text = " ".join(["star"] * 100)
    max_words = tiny_mini_clip.config.max_text_length - 2
    with torch.no_grad():
        out = tiny_mini_clip.encode_text(["a qwertyuiop", long_text])
        truncated = tiny_mini_clip.encode_text([" ".join(["star"] * max_words)])
        unk = tiny_mini_clip.encode_text(["a zzzz"])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1:], truncated)
    torch.testing.assert_close(out[:1], unk)  # every unknown word is the same <unk> token


# --- checkpoints ----------------------------------------------------------------------------------------------

def outputs(model: MiniCLIP) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.encode_image(pixels(3)), model.encode_text(TEXTS)


def test_checkpoint_round_trip(tiny_mini_clip, tmp_path):
    with torch.no_grad():
        tiny_mini_clip.log_logit_scale.fill_(3.0)
    save_mini_clip(tiny_mini_clip, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["architecture"] == "MiniCLIP"
    expected = outputs(tiny_mini_clip)
    for loaded in (load_mini_clip(tmp_path / "ckpt"), load_model(str(tmp_path / "ckpt"))):
        assert isinstance(loaded, MiniCLIP) and not loaded.training
        assert loaded.config == tiny_mini_clip.config
        assert float(loaded.logit_scale.detach()) == pytest.approx(math.exp(3.0))
        for a, b in zip(outputs(loaded), expected):
            assert torch.equal(a, b)


def test_weights_of_another_width_raise_checkpoint_error(tiny_mini_clip, tmp_path):
    save_mini_clip(tiny_mini_clip, tmp_path / "ckpt")
    config = dataclasses.replace(tiny_mini_clip.config, stem_channels=(8, 16, 16), vision_width=16,
                                 text_width=16, embed_dim=8)
    save_mini_clip(MiniCLIP(config), tmp_path / "other")
    (tmp_path / "other" / "model.safetensors").replace(tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_mini_clip(tmp_path / "ckpt")
    message = str(info.value)
    assert str(tmp_path / "ckpt" / "model.safetensors") in message
    assert "another architecture" in message and "shape mismatches" in message


def test_safetensors_with_wrong_keys(tiny_mini_clip, tmp_path):
    save_mini_clip(tiny_mini_clip, tmp_path / "ckpt")
    state = tiny_mini_clip.state_dict()
    state["extra.weight"] = torch.zeros(2)
    del state["visual.head.weight"]
    save_tensors(tmp_path / "ckpt" / "model.safetensors", state)
    with pytest.raises(CheckpointError) as info:
        load_model(str(tmp_path / "ckpt"))
    message = str(info.value)
    assert "model.safetensors" in message and "visual.head.weight" in message and "extra.weight" in message


def test_load_state_checked_leaves_module_untouched_on_error(tiny_mini_clip):
    before = {k: v.clone() for k, v in tiny_mini_clip.state_dict().items()}
    bad = {k: torch.zeros_like(v) for k, v in before.items()}
    bad["text.pos"] = torch.zeros(1, 3, 32)
    with pytest.raises(CheckpointError, match="source-name"):
        load_state_checked(tiny_mini_clip, bad, "source-name")
    assert all(torch.equal(before[k], v) for k, v in tiny_mini_clip.state_dict().items())


@pytest.mark.parametrize("content", [b"", b"not a safetensors file" * 10, None])
def test_corrupt_safetensors(tiny_mini_clip, tmp_path, content):
    save_mini_clip(tiny_mini_clip, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    if content is None:  # truncated: the header is intact, the data is not
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"{path}: not a readable safetensors file"):
        load_model(str(tmp_path / "ckpt"))


def test_missing_weights_file(tiny_mini_clip, tmp_path):
    save_mini_clip(tiny_mini_clip, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: checkpoint file not found"):
        load_mini_clip(tmp_path / "ckpt")


@pytest.mark.parametrize("config_text, message", [
    (None, "config.json: missing"),
    ("{not json", "config.json: not valid JSON"),
    ('{"model_type": "bert"}', "config.json: unknown model type"),
    ('{"architecture": "MiniCLIP", "vision_width": 32, "depth": 3}', "unknown key\\(s\\) depth"),
    ('{"architecture": "MiniCLIP", "vision_width": "wide"}', "vision_width: expected an integer, got str 'wide'"),
])
def test_bad_model_folder_config(tmp_path, config_text, message):
    folder = tmp_path / "model"
    folder.mkdir()
    if config_text is not None:
        (folder / "config.json").write_text(config_text)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(str(folder))
    assert str(folder / "config.json") in str(info.value)


def test_load_model_path_errors(tmp_path):
    with pytest.raises(CheckpointError, match="model folder not found"):
        load_model(str(tmp_path / "missing"))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="expected a model folder, got a file"):
        load_model(str(tmp_path / "file.bin"))


def test_load_mini_clip_rejects_other_architectures(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(CheckpointError, match="not a MiniCLIP config"):
        load_mini_clip(tmp_path)


# --- atomic writes --------------------------------------------------------------------------------------------

def test_atomic_writes_leave_only_the_target(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"first")
    atomic_write_bytes(tmp_path / "a.bin", b"second")
    atomic_write_json(tmp_path / "sub" / "b.json", {"x": [1, 2]})
    save_tensors(tmp_path / "c.safetensors", {"w": torch.ones(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "c.safetensors", "sub"]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["b.json"]
    assert (tmp_path / "a.bin").read_bytes() == b"second"
    assert json.loads((tmp_path / "sub" / "b.json").read_text()) == {"x": [1, 2]}
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_atomic_write_bytes_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_bytes(target, b"old content")

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(io_module.os, "fsync", crash)  # the new bytes are written, then the write fails
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new content that never lands")
    assert target.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_interrupted_checkpoint_save_keeps_old_checkpoint(tiny_mini_clip, tmp_path, monkeypatch):
    save_mini_clip(tiny_mini_clip, tmp_path / "ckpt")
    expected = outputs(tiny_mini_clip)
    real_save_file = io_module.save_file

    def half_then_crash(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt  # the user presses Ctrl-C mid-write

    changed = MiniCLIP(tiny_mini_clip.config)
    monkeypatch.setattr(io_module, "save_file", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        save_mini_clip(changed, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    for a, b in zip(outputs(load_mini_clip(tmp_path / "ckpt")), expected):
        assert torch.equal(a, b)
    assert set(load_tensors(tmp_path / "ckpt" / "model.safetensors")) == set(tiny_mini_clip.state_dict())


def test_vocabulary_is_stored_with_the_checkpoint(tiny_mini_clip, tmp_path):
    save_mini_clip(tiny_mini_clip, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["vocab"] == vocabulary()
