"""Mini-world questions and captions: determinism, answers that match the scene, vocabulary, collation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vlalign.data.mini_world import COLOURS, WorldConfig, render_scene
from vlalign.data.vqa import (
    QUADRANTS, QUESTION_TEMPLATES, QUESTION_TYPES, MiniCaptions, MiniVQA, answer_choices, vlm_vocabulary, wrong_answers,
)
from vlalign.models.tokenizer import split_words


def test_items_are_pure_functions_of_seed_and_index():
    a, b = MiniVQA(10, seed=3), MiniVQA(10, seed=3)
    for i in (0, 4, 9):
        x, y = a[i], b[i]
        assert torch.equal(x["pixels"], y["pixels"]) and x["prompt"] == y["prompt"] and x["answer"] == y["answer"]
    other = MiniVQA(10, seed=4)
    assert not torch.equal(a[0]["pixels"], other[0]["pixels"])
    assert torch.equal(MiniCaptions(5, seed=1)[2]["pixels"], MiniCaptions(5, seed=1)[2]["pixels"])


def test_question_types_cycle_and_answers_are_canonical():
    data = MiniVQA(40, seed=0)
    for i in range(40):
        item = data[i]
        kind = QUESTION_TYPES[i % len(QUESTION_TYPES)]
        assert item["question_type"] == kind and item["index"] == i
        assert item["prompt"] in QUESTION_TEMPLATES[kind]
        assert item["answer"] in answer_choices(kind)
        assert item["pixels"].dtype == torch.uint8 and item["pixels"].shape == (3, 64, 64)
    assert {data[i]["answer"] for i in range(4, 40, 5)} <= {"1", "2", "3", "4"}
    with pytest.raises(IndexError):
        data[40]


def test_where_answers_name_the_quadrant_holding_the_object():
    """With a flat background and no strokes, the object's pixels lie in the quadrant the answer names."""
    config = WorldConfig(noise_std=0.0, min_distractors=0, max_distractors=0)
    data = MiniVQA(30, seed=5, question_types=("where",), config=config)
    colours = MiniVQA(30, seed=5, question_types=("colour",), config=config)
    for i in range(30):
        item = data[i]
        image = item["pixels"].permute(1, 2, 0).numpy().astype(np.int32)
        # The background is flat (or a smooth gradient); the object differs from its neighbourhood sharply.
        edges = np.abs(np.diff(image, axis=0)).sum(-1)[:, :-1] + np.abs(np.diff(image, axis=1)).sum(-1)[:-1, :]
        ys, xs = np.nonzero(edges > 60)
        cy, cx = ys.mean(), xs.mean()
        quadrant = QUADRANTS[int(cx >= 32) + 2 * int(cy >= 32)]
        assert quadrant == item["answer"], i
    assert {colours[i]["answer"] for i in range(30)} <= set(COLOURS)


def test_render_scene_paints_each_object_in_its_colour():
    config = WorldConfig(noise_std=0.0, min_distractors=0, max_distractors=0)
    objects = [("circle", "red", 16.0, 16.0, 8.0, 0.0), ("square", "blue", 46.0, 46.0, 8.0, 0.0),
               ("circle", None, 46.0, 14.0, 7.0, 0.0)]
    image, names = render_scene(np.random.default_rng(0), objects, None, config)
    assert names[:2] == ["red", "blue"] and names[2] in COLOURS
    for (shape, _, cx, cy, _, _), name in zip(objects, names):
        pixel = image[int(cy), int(cx)].astype(float)
        assert np.abs(pixel - np.array(COLOURS[name])).max() < 50  # palette colour plus N(0, 12) jitter
    with pytest.raises(ValueError, match="unknown colour"):
        render_scene(np.random.default_rng(0), [("circle", "mauve", 16.0, 16.0, 8.0, 0.0)], None, config)


def test_counts_are_balanced_and_objects_do_not_overlap():
    data = MiniVQA(200, seed=2, question_types=("count",))
    counts = [int(data[i]["answer"]) for i in range(200)]
    assert set(counts) == {1, 2, 3, 4}
    assert min(counts.count(k) for k in (1, 2, 3, 4)) > 30


def test_captions_and_references():
    data = MiniCaptions(20, seed=1, word_prob=0.5)
    with_word = 0
    for i in range(20):
        item, refs = data[i], data.references(i)
        assert item["caption"] == refs[0] and len(set(refs)) == 3
        assert item["prompt"] == "describe the image."
        with_word += "word" in item["caption"]
        assert any(q in item["caption"] for q in QUADRANTS)
    assert 0 < with_word < 20


def test_vocabulary_covers_every_text():
    vocab = set(vlm_vocabulary())
    qa, captions = MiniVQA(50, seed=9), MiniCaptions(20, seed=9, word_prob=1.0)
    texts = [qa[i][k] for i in range(50) for k in ("prompt", "answer")]
    texts += [c for i in range(20) for c in captions.references(i)] + [captions[0]["prompt"]]
    assert {w for t in texts for w in split_words(t)} <= vocab


def test_wrong_answers_are_other_answers_of_the_same_type():
    data = MiniVQA(25, seed=0)
    types = [data[i]["question_type"] for i in range(25)]
    answers = [data[i]["answer"] for i in range(25)]
    wrong = wrong_answers(types, answers, seed=1)
    assert all(w != a and w in answer_choices(t) for w, a, t in zip(wrong, answers, types))
    assert wrong == wrong_answers(types, answers, seed=1)


def test_items_collate_into_batches():
    batch = next(iter(DataLoader(MiniVQA(8, seed=0), batch_size=4)))
    assert batch["pixels"].shape == (4, 3, 64, 64) and len(batch["prompt"]) == 4 and batch["index"].tolist() == [0, 1, 2, 3]
    batch = next(iter(DataLoader(MiniCaptions(4, seed=0), batch_size=4)))
    assert len(batch["caption"]) == 4


def test_bad_arguments():
    with pytest.raises(ValueError, match="question_types"):
        MiniVQA(5, question_types=("shape", "size"))
    with pytest.raises(ValueError, match="n must be >= 0"):
        MiniCaptions(-1)
    with pytest.raises(ValueError, match="unknown question type"):
        answer_choices("size")
