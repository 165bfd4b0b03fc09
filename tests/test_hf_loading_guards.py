"""Loading transformers checkpoints safely: float16 checkpoints load as float32 unless asked otherwise (AdamW steps on
float16 weights give NaN), and a local folder without tokenizer files is refused instead of loading a tokenizer with an
empty vocabulary. Tiny models built from configs, saved the way a user would save them."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

transformers = pytest.importorskip("transformers")

from vlalign.cli import main  # noqa: E402
from vlalign.models.checkpoint import CheckpointError  # noqa: E402
from vlalign.models.hf_blip import HFBlip  # noqa: E402
from vlalign.models.hf_clip import HFCLIP  # noqa: E402
from vlalign.models.hf_llava import HFLlava  # noqa: E402
from vlalign.models.loading import load_model  # noqa: E402
from vlalign.models.transfer import load_vision_source  # noqa: E402
from vlalign.models.vlm_loading import load_vlm  # noqa: E402

from test_hf_blip import tiny_bert_tokenizer, tiny_blip  # noqa: E402
from test_hf_clip import CROP, MEAN, RESIZE, STD, tiny_clip_model, tiny_tokenizer  # noqa: E402
from vlm_helpers import images, tiny_llava_folder  # noqa: E402

PROMPTS = ["what shape is this?", "describe the image."]
RESPONSES = ["a red circle", "3"]


def stored_dtypes(folder) -> set[torch.dtype]:
    """The dtypes in ``model.safetensors``, read from the file itself."""
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return {handle.get_tensor(key).dtype for key in handle.keys()}


@pytest.fixture(scope="module")
def fp16_llava(tmp_path_factory):
    """A tiny LLaVA folder stored in float16, as the llava-hf hub checkpoints are."""
    folder = tiny_llava_folder(tmp_path_factory.mktemp("llava16") / "model")
    transformers.LlavaForConditionalGeneration.from_pretrained(str(folder)).half().save_pretrained(str(folder))
    assert stored_dtypes(folder) == {torch.float16}
    return folder


def clip_folder(path, dtype: torch.dtype = torch.float32, tokenizer: bool = True):
    tok = tiny_tokenizer()
    model = HFCLIP(tiny_clip_model(len(tok), tok.bos_token_id, tok.eos_token_id), tok, MEAN, STD, RESIZE, CROP)
    model = model.to(dtype)
    if tokenizer:
        model.save_pretrained(path)
    else:
        model.model.save_pretrained(str(path))  # what CLIPModel.save_pretrained alone writes
    return model


def blip_folder(path, dtype: torch.dtype = torch.float32, tokenizer: bool = True):
    model = tiny_blip(tiny_bert_tokenizer()).to(dtype)
    if tokenizer:
        model.save_pretrained(path)
    else:
        model.model.save_pretrained(str(path))
    return model


# ----------------------------------------------------------------------------------------------- float16 checkpoints


def test_fp16_llava_loads_as_fp32_and_survives_an_adamw_step(fp16_llava):
    model = load_vlm(fp16_llava)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    as_stored = transformers.LlavaForConditionalGeneration.from_pretrained(str(fp16_llava)).state_dict()
    assert {v.dtype for v in as_stored.values()} == {torch.float16}  # what the loader did before
    for name, value in model.model.state_dict().items():  # the float16 values, exactly, upcast
        assert torch.equal(value, as_stored[name].float()), name
    params = [p for p in model.vision_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    model.zero_grad(set_to_none=True)
    (-model.response_logprobs(images(2, seed=1), PROMPTS, RESPONSES).total.sum()).backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in params)
    assert HFLlava.from_pretrained(fp16_llava).model.dtype == torch.float32  # the class method defaults the same way


def test_half_precision_llava_on_request_keeps_a_float32_vision_tower(fp16_llava):
    full = load_vlm(fp16_llava)
    half = load_vlm(fp16_llava, dtype=torch.float16)
    assert {p.dtype for p in half.vision_encoder.parameters()} == {torch.float32}  # what AdPO trains
    assert {p.dtype for p in half.projector.parameters()} == {torch.float16}
    assert {p.dtype for p in half.language_model.parameters()} == {torch.float16}
    pixels = images(2, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(half.response_logprobs(pixels, PROMPTS, RESPONSES).total.float(),
                                   full.response_logprobs(pixels, PROMPTS, RESPONSES).total, atol=0.05, rtol=0.01)


def test_fp16_llava_as_a_transfer_source_loads_as_fp32(fp16_llava):
    family, tower, _ = load_vision_source(fp16_llava)
    assert family == "clip" and {p.dtype for p in tower.parameters()} == {torch.float32}


@pytest.mark.parametrize("backend", ["clip", "blip"])
def test_fp16_clip_and_blip_load_as_fp32_unless_asked(backend, tmp_path):
    make, cls = (clip_folder, HFCLIP) if backend == "clip" else (blip_folder, HFBlip)
    original = make(tmp_path, dtype=torch.float16)
    assert stored_dtypes(tmp_path) == {torch.float16}
    loaded = load_model(str(tmp_path))
    assert isinstance(loaded, cls) and {p.dtype for p in loaded.parameters()} == {torch.float32}
    reference = original.float()  # the same float16 values in float32, computed independently of the loader
    x = torch.rand(2, 3, 40, 36, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(x), reference.encode_image(x), atol=1e-6, rtol=0)
        torch.testing.assert_close(loaded.encode_text(["a star", "a circle"]),
                                   reference.encode_text(["a star", "a circle"]), atol=1e-6, rtol=0)
    half = cls.from_pretrained(tmp_path, dtype=torch.float16)  # on request, for inference
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    with torch.no_grad():
        image = half.encode_image(x)  # float32 pixels, as the data loaders give
        assert image.dtype == torch.float16
        torch.testing.assert_close(image.float(), reference.encode_image(x), atol=1e-2, rtol=0)
        torch.testing.assert_close(half.encode_text(["a star"]).float(), reference.encode_text(["a star"]),
                                   atol=1e-2, rtol=0)


# ------------------------------------------------------------------------------------------------- tokenizer files


@pytest.mark.parametrize("backend", ["clip", "blip"])
def test_a_folder_without_tokenizer_files_is_refused(backend, tmp_path, capsys):
    (clip_folder if backend == "clip" else blip_folder)(tmp_path / "bare", tokenizer=False)
    assert not (tmp_path / "bare" / "tokenizer.json").exists()
    with pytest.raises(CheckpointError) as info:
        load_model(str(tmp_path / "bare"))
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'bare'}: no tokenizer files (expected one of tokenizer.json")
    assert "\n" not in message and "save the tokenizer" in message
    capsys.readouterr()  # drop the progress bars of saving
    assert main(["eval", "--model", str(tmp_path / "bare"), "--n", "4", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no tokenizer files" in err


@pytest.mark.parametrize("backend", ["clip", "blip"])
def test_a_folder_saved_with_its_tokenizer_still_loads(backend, tmp_path):
    original = (clip_folder if backend == "clip" else blip_folder)(tmp_path)
    loaded = load_model(str(tmp_path))
    assert len(loaded.tokenizer) == len(original.tokenizer) > 10
    tokens = loaded.tokenize(["a star", "a circle"])["input_ids"]
    assert not torch.equal(tokens[0], tokens[1])  # different words, different tokens


def test_a_tokenizer_far_smaller_than_the_vocabulary_is_refused(tmp_path):
    """A tokenizer of 54 tokens saved with a model of 1000 (as a stray tokenizer_config.json would give)."""
    tok = tiny_tokenizer()
    model = tiny_clip_model(1000, tok.bos_token_id, tok.eos_token_id)
    HFCLIP(model, tok, MEAN, STD, RESIZE, CROP).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=f"the tokenizer has {len(tok)} tokens but the model's text vocabulary "
                                              "has 1000"):
        load_model(str(tmp_path))


def test_a_llava_folder_without_tokenizer_files_is_refused(tmp_path, capsys):
    folder = tiny_llava_folder(tmp_path / "llava")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(CheckpointError, match=r"^.*llava: no tokenizer files \(expected one of tokenizer\.json"):
        load_vlm(folder)
    clip_folder(tmp_path / "clip")
    capsys.readouterr()
    assert main(["transfer", "--encoder", str(tmp_path / "clip"), "--into", str(folder),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{folder}: no tokenizer files" in err
