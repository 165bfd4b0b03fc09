"""The transformers CLIP backend, on a tiny randomly initialized CLIPModel built offline from a CLIPConfig.

The folder written by HFCLIP.save_pretrained is loaded back through ``load_model(folder)``, the path a user
takes, and compared with the in-memory model, with transformers' own CLIPModel outputs and with its
CLIPImageProcessor.
"""

from __future__ import annotations

import json
import string

import numpy as np
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

transformers = pytest.importorskip("transformers")

from vlalign.models import load_model  # noqa: E402
from vlalign.models.hf_clip import HFCLIP  # noqa: E402

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
RESIZE, CROP = 36, 32  # shortest edge, then centre crop, as a real CLIP processor (224 -> 224 crop) but tiny
TEXTS = ["a photo of a star", "a circle", "the word moon on a large blue square", "x"]


def tiny_tokenizer():
    """A character-level CLIPTokenizer (byte-level BPE without merges), built from an in-memory vocabulary."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in string.ascii_lowercase:
            vocab[char + suffix] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=[])


def tiny_clip_model(vocab_size: int, bos: int, eos: int) -> torch.nn.Module:
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=40, bos_token_id=bos, eos_token_id=eos,
                         pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=CROP, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    return transformers.CLIPModel(config).eval()


@pytest.fixture(scope="module")
def in_memory() -> HFCLIP:
    tokenizer = tiny_tokenizer()
    model = tiny_clip_model(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    return HFCLIP(model, tokenizer, MEAN, STD, resize_to=RESIZE, crop_size=CROP).eval()


@pytest.fixture(scope="module")
def folder(in_memory, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_clip")
    in_memory.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def loaded(folder) -> HFCLIP:
    return load_model(str(folder))


def features(output) -> torch.Tensor:
    """transformers 5.x returns a ModelOutput from get_*_features (projected ``pooler_output``); 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def smooth_image(height: int, width: int) -> np.ndarray:
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    return (np.stack([yy, xx, 0.5 + 0.5 * np.sin(6 * xx + 3 * yy)], -1) * 255).astype(np.uint8)


def to_pixels(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255


def test_folder_loads_through_load_model(folder, loaded):
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "tokenizer_config.json"} <= {
        p.name for p in folder.iterdir()}
    assert json.loads((folder / "config.json").read_text())["model_type"] == "clip"
    assert isinstance(loaded, HFCLIP) and not loaded.training and not loaded.model.training
    assert (loaded.resize_to, loaded.image_size, loaded.embed_dim, loaded.max_text_length) == (RESIZE, CROP, 16, 40)
    torch.testing.assert_close(loaded.mean.flatten(), torch.tensor(MEAN))
    torch.testing.assert_close(loaded.std.flatten(), torch.tensor(STD))


def test_loaded_equals_in_memory(in_memory, loaded):
    x = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(x), in_memory.encode_image(x), atol=1e-6, rtol=0)
        torch.testing.assert_close(loaded.encode_text(TEXTS), in_memory.encode_text(TEXTS), atol=1e-6, rtol=0)
    assert torch.equal(loaded.tokenize(TEXTS)["input_ids"], in_memory.tokenize(TEXTS)["input_ids"])
    assert float(loaded.logit_scale.detach()) == pytest.approx(float(in_memory.logit_scale.detach()))


def test_matches_transformers_clip_outputs(loaded, in_memory):
    """Against CLIPModel itself: its get_*_features and its forward's normalized embeddings and logits."""
    model, tokenizer = in_memory.model, in_memory.tokenizer
    x = torch.rand(2, 3, CROP, CROP, generator=torch.Generator().manual_seed(1))
    resized = F.interpolate(x, size=(RESIZE, RESIZE), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    offset = (RESIZE - CROP) // 2
    pixel_values = (resized[..., offset:offset + CROP, offset:offset + CROP] - torch.tensor(MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(STD).view(1, 3, 1, 1)
    tokens = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        reference_image = F.normalize(features(model.get_image_features(pixel_values=pixel_values)), dim=-1)
        reference_text = F.normalize(features(model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])), dim=-1)
        forward = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixel_values)
        image, text = loaded.encode_image(x), loaded.encode_text(TEXTS)
        logits = loaded.similarity_logits(image, text)
    assert image.shape == (2, 16) and text.shape == (len(TEXTS), 16)
    torch.testing.assert_close(image, reference_image, atol=1e-5, rtol=0)
    torch.testing.assert_close(text, reference_text, atol=1e-5, rtol=0)
    torch.testing.assert_close(image, forward.image_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(text, forward.text_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, forward.logits_per_image, atol=1e-4, rtol=1e-5)


def test_tokenize_matches_the_transformers_tokenizer(loaded):
    expected = loaded.tokenizer(TEXTS, padding=True, return_tensors="pt")
    tokens = loaded.tokenize(TEXTS)
    assert set(tokens) == {"input_ids", "attention_mask"}
    assert torch.equal(tokens["input_ids"], expected["input_ids"])
    assert torch.equal(tokens["attention_mask"], expected["attention_mask"])
    # <|startoftext|> a </w> <|endoftext|>: the pooled state is read at the end-of-text token.
    assert loaded.tokenize(["x"])["input_ids"].tolist() == [[0, string.ascii_lowercase.index("x") + 28, 1]]


def test_embeddings_normalized_and_text_batch_consistent(loaded):
    with torch.no_grad():
        text = loaded.encode_text(TEXTS)
        single = torch.cat([loaded.encode_text([t]) for t in TEXTS])
        image = loaded.encode_image(torch.rand(4, 3, 50, 44))
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(len(TEXTS)))
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(4))
    # Padding the short texts to the longest must not change their embeddings.
    torch.testing.assert_close(text, single, atol=1e-5, rtol=0)


def test_long_text_is_truncated_not_an_error(loaded):
    with torch.no_grad():
        out = loaded.encode_text(["a " * 200, "star"])
    assert out.shape == (2, 16) and torch.isfinite(out).all()
    assert loaded.tokenize(["a " * 200])["input_ids"].shape[1] == loaded.max_text_length


@pytest.mark.parametrize("height, width", [(CROP, CROP), (RESIZE, RESIZE), (48, 64), (64, 48), (90, 75)])
def test_preprocess_matches_clip_image_processor(loaded, folder, height, width):
    """Resizing (shorter side, bicubic), centre crop and normalization agree with CLIPImageProcessor."""
    processor = transformers.CLIPImageProcessor.from_pretrained(str(folder))
    array = smooth_image(height, width)
    expected = processor(images=Image.fromarray(array), return_tensors="pt")["pixel_values"]
    ours = loaded.preprocess(to_pixels(array))
    assert ours.shape == expected.shape == (1, 3, CROP, CROP)
    difference = (ours - expected).abs()
    if (height, width) == (RESIZE, RESIZE):  # no resizing: crop and normalization are exact
        assert float(difference.max()) < 1e-5
    else:  # torch's antialiased bicubic vs PIL's: close, and the same crop window
        assert float(difference.mean()) < 0.01 and float(difference.max()) < 0.05


def test_pixel_gradients_flow_through_resizing(loaded):
    x = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    loaded.encode_image(x)[:, 0].sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert float(x.grad.abs().sum()) > 0
    # 48x64 -> 36x48 -> centre 32x32 crop: the outer columns are cut away, the centre is kept.
    per_column = x.grad.abs().sum((0, 1, 2))
    assert float(per_column[:4].sum()) == 0 and float(per_column[-4:].sum()) == 0
    assert bool((per_column[16:48] > 0).all()) and bool((x.grad.abs().sum((0, 1, 3))[8:40] > 0).all())


def test_preprocess_rejects_bad_shapes(loaded):
    with pytest.raises(ValueError, match=r"expected pixels \[B, 3, H, W\]"):
        loaded.preprocess(torch.rand(3, 32, 32))


def test_towers_and_logit_scale(loaded):
    model = loaded.model
    image_ids = {id(p) for p in loaded.image_parameters()}
    text_ids = {id(p) for p in loaded.text_parameters()}
    assert image_ids == {id(p) for p in [*model.vision_model.parameters(), *model.visual_projection.parameters()]}
    assert text_ids == {id(p) for p in [*model.text_model.parameters(), *model.text_projection.parameters()]}
    assert not image_ids & text_ids
    assert float(loaded.logit_scale.detach()) == pytest.approx(float(model.logit_scale.detach().exp()))


def test_folder_without_processor_config_uses_openai_statistics(in_memory, tmp_path):
    in_memory.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").unlink()
    model = load_model(str(tmp_path))
    assert model.resize_to == model.image_size == CROP
    torch.testing.assert_close(model.mean.flatten(), torch.tensor([0.48145466, 0.4578275, 0.40821073]))


def test_folder_without_weights_is_a_clear_error(in_memory, tmp_path):
    in_memory.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="cannot load CLIP model"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("trainable", ["head", "full", "lora"])
def test_preference_optimization_runs_on_a_transformers_clip(in_memory, trainable):
    """The contrastive-PO trainer works through the same interface on a transformers CLIPModel."""
    from vlalign.data.preference import PreferenceSet, RegularizationSet
    from vlalign.training.methods.preference import PreferenceConfig, train_preference
    from vlalign.training.train_config import TrainConfig

    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 40, 48), dtype=torch.uint8)
    prompts = ("a photo of a star", "a photo of a moon", "a photo of a ring")
    pref = PreferenceSet(images, torch.zeros(8, dtype=torch.long), torch.ones(8, dtype=torch.long), prompts)
    reg = RegularizationSet(images, prompts)
    before = {k: v.clone() for k, v in in_memory.state_dict().items()}
    cfg = PreferenceConfig(method="dpo", trainable=trainable)
    result = train_preference(in_memory, pref, reg, cfg, TrainConfig(steps=3, batch_size=4, lr=1e-2), progress=False)
    assert all(torch.equal(before[k], v) for k, v in in_memory.state_dict().items())
    pixels = images.float() / 255
    with torch.no_grad():
        assert not torch.allclose(result.model.encode_image(pixels), in_memory.encode_image(pixels))
        text_before, text_after = in_memory.encode_text(list(prompts)), result.model.encode_text(list(prompts))
    if trainable == "head":
        assert not torch.allclose(text_before, text_after)  # the head transforms both towers' embeddings
    else:
        assert torch.allclose(text_before, text_after)  # the text tower is frozen
        assert not any("lora_" in k for k in result.model.state_dict())


@pytest.mark.parametrize("trainable", ["head", "full"])
def test_preference_optimization_trains_a_float64_model(in_memory, trainable):
    """Frozen quantities keep the model's dtype, so a float64 model trains (and stays float64)."""
    import copy

    from vlalign.data.preference import PreferenceSet, RegularizationSet
    from vlalign.training.methods.preference import PreferenceConfig, train_preference
    from vlalign.training.train_config import TrainConfig

    model = copy.deepcopy(in_memory).double()
    images = torch.randint(0, 256, (8, 3, 40, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    prompts = ("a photo of a star", "a photo of a moon")
    pref = PreferenceSet(images, torch.zeros(8, dtype=torch.long), torch.ones(8, dtype=torch.long), prompts)
    result = train_preference(model, pref, RegularizationSet(images, prompts), PreferenceConfig(trainable=trainable),
                              TrainConfig(steps=2, batch_size=4, lr=1e-2, log_every=1), progress=False)
    assert all(p.dtype == torch.float64 for p in result.model.parameters())
    assert result.history[0]["loss_pref"] == pytest.approx(math.log(2), abs=1e-9)  # float64 all the way


def test_lora_on_a_transformers_clip_reaches_every_image_layer_it_adapts(in_memory):
    """The projection of transformers CLIP's image tower lives outside its vision model; its adapter must still be
    in the forward pass (every LoRA parameter gets a gradient)."""
    from vlalign.data.datasets import TensorImageDataset
    from vlalign.training.methods.preference import ContrastivePreference, PreferenceConfig

    images = torch.randint(0, 256, (4, 3, 40, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    data = TensorImageDataset(images, chosen=torch.zeros(4, dtype=torch.long), rejected=torch.ones(4, dtype=torch.long))
    method = ContrastivePreference(in_memory, data, ("a photo of a star", "a photo of a moon"), None,
                                   PreferenceConfig(trainable="lora", lora_rank=2))
    method.prepare(torch.device("cpu"))
    lora = {n: p for n, p in method.trainable_module().named_parameters() if "lora_" in n}
    assert any("projection" in n for n in lora) and all(p.requires_grad for p in lora.values())
    pixels_batch = {"index": torch.arange(4), "pixels": images, "chosen": torch.zeros(4, dtype=torch.long),
                    "rejected": torch.ones(4, dtype=torch.long)}
    # B starts at zero, so A gets no gradient at first: nudge B, then every adapter must receive a gradient.
    with torch.no_grad():
        for name, p in lora.items():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    method({"pref": pixels_batch, "step": 0, "seed": 0})["loss"].backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in lora.values()), \
        [n for n, p in lora.items() if p.grad is None or float(p.grad.abs().sum()) == 0]
