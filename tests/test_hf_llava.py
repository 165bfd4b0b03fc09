"""transformers LLaVA behind the GenerativeVLM interface, on a tiny model built from a LlavaConfig with a real
tokenizer (``<image>`` is an added token): scores and greedy decoding against transformers' own forward and
generate, unused vision parameters by a backward pass, save/load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlalign.models.hf_llava import HFLlava
from vlalign.models.vlm_loading import load_vlm

from vlm_helpers import images, tiny_llava_folder

PROMPTS = ["what shape is this?", "describe the image.", "how many shapes are there?"]
RESPONSES = ["a red circle", "a blue star in the top left", "3"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_llava_folder(tmp_path_factory.mktemp("llava") / "model")


@pytest.fixture(scope="module")
def llava(folder) -> HFLlava:
    return HFLlava.from_pretrained(folder)


def test_loads_with_its_processor_and_image_token(llava):
    assert llava.num_image_tokens == 16  # (32 / 8)² patches, CLS dropped
    ids = llava.prompt_ids(["what shape is this?"])[0]
    assert ids.count(llava.image_token_id) == 16
    assert llava.tokenizer.convert_ids_to_tokens(ids[:3]) == ["USER", ":", "<image>"]
    assert llava.decode_ids(llava.response_ids(["a red circle"])[0][:-1]) == "a red circle"


def test_response_logprobs_match_transformers_own_forward(llava):
    """transformers' LlavaForConditionalGeneration merges image features itself from input_ids and pixel_values."""
    pixels = images(3, seed=1)
    with torch.no_grad():
        scores = llava.response_logprobs(pixels, PROMPTS, RESPONSES)
        for i in range(3):
            prefix, tail = llava.prompt_ids([PROMPTS[i]])[0], llava.response_ids([RESPONSES[i]])[0]
            out = llava.model(input_ids=torch.tensor([prefix + tail]), pixel_values=llava.preprocess(pixels[i:i + 1]))
            log_probs = F.log_softmax(out.logits[0].double(), -1)
            expected = torch.stack([log_probs[len(prefix) - 1 + t, token] for t, token in enumerate(tail)])
            torch.testing.assert_close(scores.per_token[i, : len(tail)].double(), expected, atol=2e-5, rtol=0)


def test_batching_changes_nothing(llava):
    pixels = images(3, seed=2)
    with torch.no_grad():
        together = llava.response_logprobs(pixels, PROMPTS, RESPONSES)
        for i in range(3):
            alone = llava.response_logprobs(pixels[i:i + 1], PROMPTS[i:i + 1], RESPONSES[i:i + 1])
            torch.testing.assert_close(together.total[i:i + 1], alone.total, atol=1e-5, rtol=1e-5)


def test_greedy_generation_matches_transformers_generate(llava):
    pixels = images(3, seed=3)
    with torch.no_grad():
        ours = llava.generate(pixels, PROMPTS, max_new_tokens=5)
        for i in range(3):
            prefix = torch.tensor([llava.prompt_ids([PROMPTS[i]])[0]])
            generated = llava.model.generate(input_ids=prefix, pixel_values=llava.preprocess(pixels[i:i + 1]),
                                             attention_mask=torch.ones_like(prefix), max_new_tokens=5, do_sample=False,
                                             suppress_tokens=list(llava.suppressed_token_ids),
                                             eos_token_id=llava.eos_token_id, pad_token_id=llava.pad_token_id)
            new = generated[0, prefix.shape[1]:].tolist()
            new = new[: new.index(llava.eos_token_id)] if llava.eos_token_id in new else new
            assert ours[i] == llava.decode_ids(new)


def test_unused_vision_parameters_get_no_gradient_and_are_not_counted(llava):
    """LLaVA reads the penultimate layer: the last layer and post_layernorm get no gradient."""
    llava.zero_grad(set_to_none=True)
    llava.response_logprobs(images(2, seed=4), PROMPTS[:2], RESPONSES[:2]).total.sum().backward()
    tower = llava.vision_encoder
    no_grad = {name for name, p in tower.named_parameters() if p.grad is None}
    unused = llava.unused_vision_parameters()
    assert no_grad == unused
    assert any(".layers.2." in name for name in unused) and any("post_layernorm" in name for name in unused)
    assert not any(".layers.1." in name for name in unused)
    assert llava.vision_parameter_count() == sum(p.numel() for p in tower.parameters() if p.grad is not None)
    assert llava.vision_parameter_count() < sum(p.numel() for p in tower.parameters())
    llava.zero_grad(set_to_none=True)


def test_save_and_load_round_trip(llava, tmp_path):
    llava.save(tmp_path / "copy")
    assert (tmp_path / "copy" / "tokenizer.json").is_file() and (tmp_path / "copy" / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".copy")]  # the staging folder is gone
    loaded = load_vlm(tmp_path / "copy")
    assert isinstance(loaded, HFLlava)
    pixels = images(2, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(loaded.response_logprobs(pixels, PROMPTS[:2], RESPONSES[:2]).total,
                                   llava.response_logprobs(pixels, PROMPTS[:2], RESPONSES[:2]).total)


def test_bad_template_and_mismatched_image_token(llava):
    with pytest.raises(ValueError, match="one '<image>'"):
        HFLlava(llava.model, llava.tokenizer, [0.5] * 3, [0.5] * 3, 32, 32, prompt_template="{prompt}")
    llava.model.config.image_token_id, saved = 4, llava.model.config.image_token_id
    try:
        with pytest.raises(ValueError, match="image_token_id is 4"):
            HFLlava(llava.model, llava.tokenizer, [0.5] * 3, [0.5] * 3, 32, 32)
    finally:
        llava.model.config.image_token_id = saved
