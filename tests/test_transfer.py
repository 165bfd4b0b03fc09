"""``vlalign transfer``: a trained vision encoder into another VLM, its projector and decoder byte-identical."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from vlalign.cli import main
from vlalign.models.checkpoint import CheckpointError
from vlalign.models.loading import save_mini_clip
from vlalign.models.mini_clip import MiniCLIP, MiniCLIPConfig
from vlalign.models.transfer import transfer_vision_encoder
from vlalign.models.vlm_loading import load_vlm

from vlm_helpers import TINY_TOWER, tiny_clip_vision_config, tiny_llava_folder, tiny_mini_vlm


def _tensor_bytes(path) -> dict[str, bytes]:
    with safe_open(str(path), "pt") as handle:
        return {k: handle.get_tensor(k).numpy().tobytes() for k in handle.keys()}


@pytest.fixture
def encoder(tmp_path):
    """A MiniCLIP whose tower differs from the VLM's (as a TeCoA / FARE run's would)."""
    torch.manual_seed(7)
    clip = MiniCLIP(MiniCLIPConfig(**TINY_TOWER, vocab=["a", "circle"], pixel_mean=(0.4, 0.5, 0.6)))
    save_mini_clip(clip, tmp_path / "encoder")
    return clip, tmp_path / "encoder"


def test_mini_encoder_into_a_mini_vlm(encoder, tmp_path, capsys):
    clip, folder = encoder
    tiny_mini_vlm(seed=2).save(tmp_path / "vlm")
    assert main(["transfer", "--encoder", str(folder), "--into", str(tmp_path / "vlm"), "--out", str(tmp_path / "out")]) == 0
    assert "projector and decoder unchanged" in capsys.readouterr().out
    before, after = _tensor_bytes(tmp_path / "vlm" / "model.safetensors"), _tensor_bytes(tmp_path / "out" / "model.safetensors")
    assert before.keys() == after.keys()
    for key in before:
        if key.startswith("vision."):
            assert after[key] == clip.visual.state_dict()[key[len("vision."):]].numpy().tobytes(), key
        else:
            assert after[key] == before[key], key  # projector and decoder: byte-identical
    assert any(before[k] != after[k] for k in before if k.startswith("vision."))
    moved = load_vlm(tmp_path / "out")
    assert moved.config.vision.pixel_mean == (0.4, 0.5, 0.6)
    assert torch.equal(moved.vision.mean.flatten(), torch.tensor([0.4, 0.5, 0.6]))
    assert json.loads((tmp_path / "out" / "transfer.json").read_text())["encoder"] == str(folder)
    # A MiniVLM (e.g. trained by AdPO) is a source too.
    transfer_vision_encoder(tmp_path / "out", tiny_mini_vlm(seed=3))


def test_with_vision_tower_takes_the_towers_pixel_statistics(encoder):
    clip, _ = encoder
    vlm = tiny_mini_vlm(seed=2).with_vision_tower(clip)
    assert vlm.config.vision.pixel_mean == (0.4, 0.5, 0.6)
    bare = tiny_mini_vlm(seed=2).with_vision_tower(clip.visual)  # a bare tower: its buffers' float32 values
    assert torch.equal(bare.vision.mean, clip.visual.mean) and torch.equal(bare.vision.std, clip.visual.std)
    pixels = torch.rand(2, 3, clip.image_size, clip.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(vlm.pooled_embedding(pixels), clip.visual(pixels))


def test_dtype_is_refused_for_a_mini_vlm(encoder, tmp_path, capsys):
    _, folder = encoder
    tiny_mini_vlm(seed=2).save(tmp_path / "vlm")
    assert main(["transfer", "--encoder", str(folder), "--into", str(tmp_path / "vlm"), "--dtype", "float16",
                 "--out", str(tmp_path / "out")]) == 2
    assert "a MiniVLM runs in float32; dtype torch.float16 applies to a LLaVA model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_mismatched_towers_fail_with_a_clear_error(tmp_path):
    wider = MiniCLIP(MiniCLIPConfig(**{**TINY_TOWER, "vision_layers": 2}, vocab=["a"]))
    save_mini_clip(wider, tmp_path / "wider")
    with pytest.raises(CheckpointError, match="vision_layers: 2 vs 1"):
        transfer_vision_encoder(tmp_path / "wider", tiny_mini_vlm())
    with pytest.raises(CheckpointError, match="encoder folder not found"):
        transfer_vision_encoder(tmp_path / "missing", tiny_mini_vlm())
    (tmp_path / "head").mkdir()
    (tmp_path / "head" / "head.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="linear-head run"):
        transfer_vision_encoder(tmp_path / "head", tiny_mini_vlm())


def _clip_folder(path, hidden_size=32, seed=5):
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig

    torch.manual_seed(seed)
    text = CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                          vocab_size=50, max_position_embeddings=16)
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=tiny_clip_vision_config(hidden_size).to_dict(),
                                 projection_dim=16))
    model.save_pretrained(str(path))
    return model


def test_clip_vision_tower_into_llava(tmp_path, capsys):
    llava_folder = tiny_llava_folder(tmp_path / "llava")
    clip = _clip_folder(tmp_path / "clip")
    assert main(["transfer", "--encoder", str(tmp_path / "clip"), "--into", str(llava_folder),
                 "--out", str(tmp_path / "out")]) == 0
    before = _tensor_bytes(llava_folder / "model.safetensors")
    after = _tensor_bytes(tmp_path / "out" / "model.safetensors")
    assert before.keys() == after.keys()
    clip_vision = {k: v.numpy().tobytes() for k, v in clip.vision_model.state_dict().items()}
    replaced = 0
    for key in before:
        if "vision_tower" in key:
            name = key.split("vision_tower.", 1)[1]
            name = name[len("vision_model."):] if name not in clip_vision else name
            assert after[key] == clip_vision[name], key
            replaced += 1
        else:
            assert after[key] == before[key], key  # projector and language model: byte-identical
    assert replaced == len(clip_vision)
    assert isinstance(load_vlm(tmp_path / "out"), type(load_vlm(llava_folder)))


def test_wrong_shapes_or_families_fail_clearly(tmp_path, encoder):
    llava_folder = tiny_llava_folder(tmp_path / "llava")
    _clip_folder(tmp_path / "clip64", hidden_size=64)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        transfer_vision_encoder(tmp_path / "clip64", load_vlm(llava_folder))
    with pytest.raises(CheckpointError, match="does not fit a LLaVA model"):
        transfer_vision_encoder(encoder[1], load_vlm(llava_folder))
    with pytest.raises(CheckpointError, match="does not fit a MiniVLM"):
        transfer_vision_encoder(llava_folder, tiny_mini_vlm())
    assert main(["transfer", "--encoder", str(tmp_path / "clip64"), "--into", str(llava_folder),
                 "--out", str(tmp_path / "out")]) == 2
