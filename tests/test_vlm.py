"""The generative VLM interface on MiniVLM: scoring against brute force, batching, decoding, vision parameters,
token merging, save/load."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from vlalign.models.checkpoint import CheckpointError
from vlalign.models.mini_clip import MiniCLIP, MiniCLIPConfig
from vlalign.models.mini_vlm import MiniVLM, MiniVLMConfig, load_mini_vlm, mini_vlm_from_clip
from vlalign.models.vlm_loading import load_vlm

from vlm_helpers import TINY_TOWER, images, tiny_mini_vlm

PROMPTS = ["what shape is this?", "how many shapes are there?", "describe the image.", "what colour is it?"]
RESPONSES = ["circle", "3", "a red star in the top left with the word moon", "pink and purple"]


@pytest.fixture(scope="module")
def model() -> MiniVLM:
    return tiny_mini_vlm()


def _full_sequence(model: MiniVLM, pixel: torch.Tensor, prompt: str, ids: list[int]) -> torch.Tensor:
    """Input embeddings of one unpadded sequence: projected image tokens, <bos>, prompt words, <sep>, ``ids``."""
    projected = model.project(model.image_features(pixel[None]))[0]
    prefix = model.prompt_ids([prompt])[0]
    n = model.num_image_tokens
    assert prefix[:n] == [model.image_token_id] * n
    text = torch.tensor(prefix[n:] + ids)
    return torch.cat([projected, model.embed_ids(text[None])[0]])[None]


def _brute_force_logprobs(model: MiniVLM, pixel: torch.Tensor, prompt: str, response: str) -> list[float]:
    """log p of each response token, recomputing the whole (unpadded) sequence for every token."""
    target = model.response_ids([response])[0]
    out = []
    for t, token in enumerate(target):
        embeds = _full_sequence(model, pixel, prompt, target[:t])
        logits = model.language_model(inputs_embeds=embeds).logits[0, -1]
        out.append(float(F.log_softmax(logits.double(), -1)[token]))
    return out


def test_response_logprobs_match_brute_force(model):
    pixels = images(3)
    prompts, responses = PROMPTS[:3], RESPONSES[:3]
    with torch.no_grad():
        scores = model.response_logprobs(pixels, prompts, responses)
        for i in range(3):
            expected = _brute_force_logprobs(model, pixels[i], prompts[i], responses[i])
            length = len(expected)
            assert int(scores.lengths[i]) == length == len(responses[i].split()) + 1  # words and <eos>
            torch.testing.assert_close(scores.per_token[i, :length].double(), torch.tensor(expected, dtype=torch.float64), atol=2e-5, rtol=0)
            assert bool((scores.per_token[i, length:] == 0).all()) and not bool(scores.mask[i, length:].any())
            assert abs(float(scores.total[i]) - sum(expected)) < 1e-4
    torch.testing.assert_close(scores.mean, scores.total / scores.lengths)


def test_batching_changes_nothing(model):
    """Chosen and rejected of several lengths in one batch score as they do one at a time."""
    pixels = images(4, seed=1)
    batch_pixels = torch.cat([pixels, pixels])
    prompts = PROMPTS + PROMPTS
    responses = RESPONSES + ["square", "1 2 3 4", "the word", "a blue ring"]
    with torch.no_grad():
        together = model.response_logprobs(batch_pixels, prompts, responses)
        for i in range(len(prompts)):
            alone = model.response_logprobs(batch_pixels[i:i + 1], prompts[i:i + 1], responses[i:i + 1])
            length = int(alone.lengths[0])
            torch.testing.assert_close(together.per_token[i, :length], alone.per_token[0, :length], atol=1e-5, rtol=1e-5)
            assert bool(together.greedy_match[i] == alone.greedy_match[0])


def test_logprobs_are_normalized_over_the_vocabulary(model):
    """Summing p(first response word) over every word gives 1: the scorer is a distribution, not a score."""
    pixels = images(1, seed=2)
    words = model.vocab[len(model.vocab) - len(model.config.vocab):]
    with torch.no_grad():
        first = model.response_logprobs(pixels.expand(len(words), -1, -1, -1), ["what shape is this?"] * len(words), words)
        eos = model.response_logprobs(pixels, ["what shape is this?"], [""])
    total = first.per_token[:, 0].exp().sum() + eos.per_token[0, 0].exp()
    # <pad>, <unk>, <bos>, <image>, <sep> carry the rest of the mass.
    assert 0.5 < float(total) <= 1.0 + 1e-5


def _brute_force_greedy(model: MiniVLM, pixel: torch.Tensor, prompt: str, max_new_tokens: int) -> str:
    ids: list[int] = []
    for _ in range(max_new_tokens):
        logits = model.language_model(inputs_embeds=_full_sequence(model, pixel, prompt, ids)).logits[0, -1].clone()
        logits[list(model.suppressed_token_ids)] = float("-inf")  # control tokens are never emitted
        token = int(logits.argmax())
        if token == model.eos_token_id:
            break
        ids.append(token)
    return model.decode_ids(ids)


def test_greedy_generation_matches_brute_force_and_is_batch_invariant(model):
    pixels = images(4, seed=3)
    with torch.no_grad():
        batched = model.generate(pixels, PROMPTS, max_new_tokens=6)
        for i in range(4):
            assert batched[i] == _brute_force_greedy(model, pixels[i], PROMPTS[i], 6)
            assert model.generate(pixels[i:i + 1], PROMPTS[i:i + 1], max_new_tokens=6) == [batched[i]]


def test_greedy_match_says_whether_greedy_decoding_reproduces_the_response(model):
    pixels = images(4, seed=4)
    with torch.no_grad():
        outputs = model.generate(pixels, PROMPTS, max_new_tokens=8)
        longer = model.generate(pixels, PROMPTS, max_new_tokens=12)
        scores = model.response_logprobs(pixels, PROMPTS, outputs)
        words = [w for w in model.config.vocab if w not in " ".join(outputs).split()]
        other = model.response_logprobs(pixels, PROMPTS, [o + " " + words[0] for o in outputs])
    finished = [o == l for o, l in zip(outputs, longer)]  # a cut-off output has no <eos> to match
    assert [bool(g) for g in scores.greedy_match] == finished
    assert not bool(other.greedy_match.any())


def test_sampling_is_reproducible_by_seed(model):
    pixels = images(4, seed=5)
    with torch.no_grad():
        a = model.generate(pixels, PROMPTS, max_new_tokens=5, greedy=False, temperature=2.0, seed=11)
        b = model.generate(pixels, PROMPTS, max_new_tokens=5, greedy=False, temperature=2.0, seed=11)
        draws = {tuple(model.generate(pixels, PROMPTS, max_new_tokens=5, greedy=False, temperature=2.0, seed=s))
                 for s in range(6)}
    assert a == b
    assert len(draws) > 1
    assert all(w in model.index for text in a for w in text.split())
    with pytest.raises(ValueError, match="temperature"):
        model.generate(pixels, PROMPTS, greedy=False, temperature=0.0)


def test_vision_parameters_are_exactly_those_that_get_gradients(model):
    pixels = images(2, seed=6).requires_grad_(True)
    model.zero_grad(set_to_none=True)
    model.response_logprobs(pixels, PROMPTS[:2], RESPONSES[:2]).total.sum().backward()
    no_grad = {name for name, p in model.vision_encoder.named_parameters() if p.grad is None}
    assert no_grad == model.unused_vision_parameters() == {"norm.weight", "norm.bias", "head.weight"}
    trainable = set(map(id, model.vision_parameters()))
    assert all((id(p) in trainable) == (p.grad is not None) for p in model.vision_encoder.parameters())
    assert model.vision_parameter_count() == sum(p.numel() for p in model.vision_encoder.parameters() if p.grad is not None)
    assert pixels.grad is not None and float(pixels.grad.abs().sum()) > 0
    model.zero_grad(set_to_none=True)


def test_token_merge_concatenates_each_two_by_two_block(model):
    features = torch.randn(2, 16, 32)
    merged = []
    for row in range(2):
        for col in range(2):
            block = [features[:, (2 * row + dr) * 4 + 2 * col + dc] for dr in range(2) for dc in range(2)]
            merged.append(torch.cat(block, dim=-1))
    projector = model.projector
    with torch.no_grad():
        torch.testing.assert_close(projector.merge_tokens(features), torch.stack(merged, dim=1))
        expected = projector.fc2(F.gelu(projector.fc1(projector.norm(torch.stack(merged, dim=1))))) + projector.pos
        torch.testing.assert_close(model.project(features), expected)
    assert model.num_image_tokens == 4


def test_encode_image_is_the_flattened_features_the_decoder_reads(model):
    pixels = images(2, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(pixels), model.image_features(pixels).flatten(1))
        assert model.encode_image(pixels).shape == (2, 16 * 32)
        torch.testing.assert_close(model.pooled_embedding(pixels), model.vision(pixels))


def test_resizes_images_of_another_size_inside(model):
    big = torch.nn.functional.interpolate(images(1, seed=8), size=(64, 64), mode="bilinear", antialias=True)
    with torch.no_grad():
        assert model.generate(big, PROMPTS[:1], max_new_tokens=3)[0] is not None


def test_bad_inputs_give_clear_errors(model):
    pixels = images(2)
    with pytest.raises(ValueError, match="outside the model's vocabulary: \\['zebra'\\]"):
        model.response_logprobs(pixels, PROMPTS[:2], ["circle", "zebra"])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        model.response_logprobs(pixels, PROMPTS[:2], ["circle"])
    with pytest.raises(TypeError, match="list of strings"):
        model.generate(pixels, "what shape is this?")
    with pytest.raises(ValueError, match=r"image features \[3, N, D\]"):
        model.response_logprobs(pixels, PROMPTS[:3], RESPONSES[:3])
    with pytest.raises(ValueError, match="exceeds the decoder's max_positions"):
        model.response_logprobs(pixels[:1], PROMPTS[:1], [" ".join(["circle"] * 80)])
    # Unknown prompt words are read as <unk>, as a user's question may hold any word.
    with torch.no_grad():
        assert len(model.generate(pixels[:1], ["what zebra is this?"], max_new_tokens=2)) == 1


def test_save_and_load_round_trip(model, tmp_path):
    model.save(tmp_path / "vlm")
    loaded = load_mini_vlm(tmp_path / "vlm")
    assert json.loads((tmp_path / "vlm" / "config.json").read_text())["architecture"] == "MiniVLM"
    pixels = images(2, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(loaded.response_logprobs(pixels, PROMPTS[:2], RESPONSES[:2]).total,
                                   model.response_logprobs(pixels, PROMPTS[:2], RESPONSES[:2]).total)
    assert isinstance(load_vlm(tmp_path / "vlm"), MiniVLM)


def test_load_errors_name_the_file(model, tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_mini_vlm(tmp_path)
    model.save(tmp_path / "vlm")
    data = json.loads((tmp_path / "vlm" / "config.json").read_text())
    data["hidden_size"] = 48
    (tmp_path / "vlm" / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="another architecture"):
        load_mini_vlm(tmp_path / "vlm")
    data["heads"] = 5
    (tmp_path / "vlm" / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="divisible by heads 5"):
        load_mini_vlm(tmp_path / "vlm")
    import vlalign.models.vlm_loading as vlm_loading

    monkeypatch.setattr(vlm_loading, "embedded_vlm_dir", lambda spec: tmp_path / "not_shipped")
    with pytest.raises(CheckpointError, match="not shipped in this version"):
        load_vlm("mini-vlm-large")


def test_any_minclip_tower_of_the_same_architecture_plugs_in(model):
    torch.manual_seed(3)
    other = MiniCLIP(MiniCLIPConfig(**TINY_TOWER, vocab=["a", "b"]))
    vlm = tiny_mini_vlm()
    vlm.with_vision_tower(other)
    for name, tensor in other.visual.state_dict().items():
        assert torch.equal(vlm.vision.state_dict()[name], tensor)
    built = mini_vlm_from_clip(other, model.config.vocab, hidden_size=32, layers=1, heads=2, intermediate_size=64)
    assert torch.equal(built.vision.pos, other.visual.pos)
    wider = MiniCLIP(MiniCLIPConfig(**{**TINY_TOWER, "stem_channels": (8, 16, 48), "vision_width": 48}, vocab=["a"]))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        vlm.with_vision_tower(wider)


def test_config_validation():
    with pytest.raises(ValueError, match="vocab is empty"):
        MiniVLMConfig(vocab=[])
    with pytest.raises(ValueError, match="special tokens"):
        MiniVLMConfig(vocab=["a", "<sep>"])
    with pytest.raises(ValueError, match="token_merge 3 must divide"):
        MiniVLMConfig(vocab=["a"], token_merge=3)


def test_an_earlier_feature_layer_leaves_the_later_blocks_without_gradient():
    torch.manual_seed(0)
    config = MiniVLMConfig(vision=MiniCLIPConfig(**{**TINY_TOWER, "vision_layers": 2}),
                           vocab=list(tiny_mini_vlm().config.vocab), hidden_size=32, layers=1, heads=2,
                           intermediate_size=64, feature_layer=-2, max_positions=64)
    model = MiniVLM(config)
    pixels = images(2, seed=12)
    torch.testing.assert_close(model.image_features(pixels), model.vision.tokens(pixels, 1))
    model.response_logprobs(pixels, PROMPTS[:2], RESPONSES[:2]).total.sum().backward()
    no_grad = {name for name, p in model.vision.named_parameters() if p.grad is None}
    assert no_grad == model.unused_vision_parameters()
    assert any(name.startswith("blocks.1.") for name in no_grad) and not any(n.startswith("blocks.0.") for n in no_grad)
    with pytest.raises(ValueError, match="feature_layer 2 is not a block"):
        MiniVLMConfig(vision=MiniCLIPConfig(**TINY_TOWER), vocab=["a"], feature_layer=2)
