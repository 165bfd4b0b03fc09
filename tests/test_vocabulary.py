"""Words a word-level text tower does not know fail loudly instead of all reading as <unk>; preference JSONL
values are templated once."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlalign.cli import main
from vlalign.data.folder import DatasetError
from vlalign.data.preference import is_full_prompt, load_preference_jsonl
from vlalign.models.embeddings import class_text_embeddings
from vlalign.models.heads import HeadedCLIP, LinearHead
from vlalign.models.vocabulary import UnknownWordsError, UnknownWordsWarning, check_known_words


def test_unknown_words_are_listed_with_the_vocabulary_size(tiny_mini_clip):
    size = tiny_mini_clip.vocabulary_size()
    assert size == len(tiny_mini_clip.config.vocab)
    with pytest.raises(UnknownWordsError) as info:
        class_text_embeddings(tiny_mini_clip, ["dog", "cat", "star"])
    message = str(info.value)
    assert message.startswith(f"class prompts: 2 word(s) unknown to the model (its vocabulary of {size} words): "
                              "'cat', 'dog'")
    # a caller without an option to allow them (vlalign train) must not point at one it lacks
    assert "--allow-unknown-words" not in message
    assert message.endswith("or change the texts to use known words")
    with pytest.raises(UnknownWordsError, match="or allow them with --allow-unknown-words$"):
        class_text_embeddings(tiny_mini_clip, ["dog", "star"], allow_option="--allow-unknown-words")


def test_empty_chosen_or_rejected_is_refused(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"image": "a.png", "chosen": " ", "rejected": "star"}) + "\n")
    with pytest.raises(DatasetError, match=r"prefs.jsonl line 1: \"chosen\" must be a non-empty class name"):
        load_preference_jsonl(path, 32)


def test_non_utf8_preference_file_names_the_file(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(DatasetError, match=r"prefs.jsonl: not UTF-8 text \(invalid start byte at byte 0\)"):
        load_preference_jsonl(path, 32)


def test_the_failure_is_real_unknown_prompts_are_identical(tiny_mini_clip):
    # What the check prevents: every unknown class name gives the very same prompt embedding.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownWordsWarning)
        emb = class_text_embeddings(tiny_mini_clip, ["dog", "cat"], allow_unknown_words=True)
    torch.testing.assert_close(emb[0], emb[1])


def test_allowed_unknown_words_warn(tiny_mini_clip):
    with pytest.warns(UnknownWordsWarning, match="'zebra'"):
        assert check_known_words(tiny_mini_clip, ["a photo of a zebra"], allow=True) == ["zebra"]
    assert check_known_words(tiny_mini_clip, ["a photo of a star"]) == []


def test_a_head_model_checks_its_base_vocabulary(tiny_mini_clip):
    headed = HeadedCLIP(tiny_mini_clip, LinearHead(tiny_mini_clip.embed_dim))
    assert headed.unknown_words(["a dog", "a star"]) == ["dog"]
    assert headed.vocabulary_size() == tiny_mini_clip.vocabulary_size()


def write_folder(folder: Path, classes: list[str]) -> Path:
    (folder / "images").mkdir(parents=True)
    lines = []
    for i, name in enumerate(classes * 2):
        Image.new("RGB", (64, 64), (40 * i, 90, 160)).save(folder / f"images/{i}.png")
        lines.append(json.dumps({"file_name": f"images/{i}.png", "label": name}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_eval_on_a_folder_of_unknown_classes_fails_in_one_line(tmp_path, capsys):
    folder = write_folder(tmp_path / "pets", ["dog", "cat"])
    assert main(["eval", "--data", str(folder), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlalign eval: error: class prompts: 2 word(s) unknown to the model "
                          "(its vocabulary of 41 words): 'cat', 'dog'")
    assert "\n" not in err and not (tmp_path / "o" / "metrics.json").exists()


def test_allow_unknown_words_evaluates_and_records_them(tmp_path, capsys):
    folder = write_folder(tmp_path / "pets", ["dog", "cat"])
    assert main(["eval", "--data", str(folder), "--allow-unknown-words", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "vlalign eval: warning: class prompts: 2 word(s) unknown" in err
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["unknown_words"] == ["cat", "dog"]


def test_the_people_model_on_the_shape_world_fails(tmp_path, capsys):
    assert main(["eval", "--model", "mini-people", "--n", "8", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "(its vocabulary of 23 words)" in err and "'star'" in err and "'photo'" in err


def test_robust_eval_checks_the_words_too(tmp_path, capsys):
    assert main(["robust-eval", "--model", "mini-people", "--n", "4", "--out", str(tmp_path / "o")]) == 2
    assert "unknown to the model" in capsys.readouterr().err


# --- preference JSONL: free text is not templated a second time --------------------------------------------------

def test_a_head_model_honours_normalize_false(tiny_mini_clip):
    weight = torch.eye(tiny_mini_clip.embed_dim) * 3 + 0.1
    model = HeadedCLIP(tiny_mini_clip, LinearHead(tiny_mini_clip.embed_dim, weight))
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw = model.encode_image(pixels, normalize=False)
        base = tiny_mini_clip.encode_image(pixels)  # the head maps the base's normalized embedding
        assert torch.allclose(raw, base @ weight.t(), atol=1e-6)
        assert torch.allclose(model.encode_image(pixels), torch.nn.functional.normalize(raw, dim=-1), atol=1e-6)
        tokens = model.tokenize(["a circle"])
        assert torch.allclose(model.encode_tokens(tokens, normalize=False),
                              tiny_mini_clip.encode_tokens(tokens) @ weight.t(), atol=1e-6)


def test_a_head_checkpoint_names_what_is_wrong(tmp_path):
    from safetensors.torch import save_file

    from vlalign.models.checkpoint import CheckpointError
    from vlalign.models.loading import load_model

    folder = tmp_path / "head"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"kind": "head", "base_model": "mini"}))
    save_file({"W": torch.eye(4)}, str(folder / "head.safetensors"))
    with pytest.raises(CheckpointError, match="head.safetensors: expected one floating-point tensor"):
        load_model(folder)
    save_file({"weight": torch.eye(128).half()}, str(folder / "head.safetensors"))
    model = load_model(folder)  # a half-precision head is cast to the base model's dtype
    assert model.head.weight.dtype == torch.float32


def test_full_prompt_rule():
    assert not is_full_prompt("star")
    assert is_full_prompt("a photo of a star")
    assert is_full_prompt("a drawing of a star")       # more than one word: free text
    assert is_full_prompt("A Photo of a star")
    assert is_full_prompt("traffic light")             # documented: write multi-word classes in full
    assert not is_full_prompt("photo", "a photo of a {}")
    assert is_full_prompt("itap", "{} itap")           # contains the template's own text
    # Word by word, not as strings: "star" and "cat" contain the letter "a" of "a {}" but not its word.
    assert not is_full_prompt("star", "a {}") and not is_full_prompt("cat", "a {}")
    assert is_full_prompt("a", "a {}")


def write_triplets(folder: Path, rows: list[tuple[str, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (10, 20, 30)).save(folder / "x.png")
    path = folder / "pref.jsonl"
    path.write_text("".join(json.dumps({"image": "x.png", "chosen": c, "rejected": r}) + "\n" for c, r in rows))
    return path


def test_free_text_chosen_is_used_as_it_is(tmp_path):
    path = write_triplets(tmp_path, [("a photo of a star", "a drawing of a heart"), ("moon", "a photo of a star")])
    pref = load_preference_jsonl(path, image_size=32)
    assert sorted(pref.prompts) == ["a drawing of a heart", "a photo of a moon", "a photo of a star"]
    assert [pref.prompts[i] for i in pref.chosen.tolist()] == ["a photo of a star", "a photo of a moon"]
    assert [pref.prompts[i] for i in pref.rejected.tolist()] == ["a drawing of a heart", "a photo of a star"]


def test_a_class_name_and_its_prompt_share_one_prompt(tmp_path):
    path = write_triplets(tmp_path, [("star", "moon"), ("a photo of a star", "a photo of a moon")])
    pref = load_preference_jsonl(path, image_size=32)
    assert pref.prompts == ("a photo of a moon", "a photo of a star")
    assert pref.chosen.tolist() == [1, 1] and pref.rejected.tolist() == [0, 0]
    path = write_triplets(tmp_path / "same", [("star", "a photo of a star")])
    with pytest.raises(DatasetError, match="line 1: chosen 'star' and rejected 'a photo of a star' are the same prompt"):
        load_preference_jsonl(path, image_size=32)
