"""The procedural mini world and the typographic renderer."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vlalign.data.fonts import FONT_NAMES, font_dir, load_font
from vlalign.data.mini_world import (
    HELDOUT_CLASSES, INDOMAIN_CLASSES, MiniWorld, WorldConfig, parse_split, vocabulary,
)
from vlalign.data.shapes import SHAPE_NAMES
from vlalign.data.typographic import WordStyle, draw_word, typographic_attack

TEST_KINDS = ("clean", "typographic", "matching")


def assert_same_set(a, b):
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.written, b.written)
    assert a.captions == b.captions
    assert a.classnames == b.classnames


@pytest.mark.parametrize("split", ["pretrain", *TEST_KINDS])
def test_same_seed_same_images_different_seed_different_images(world, split):
    a = world.sample(split, 24, seed=7)
    assert_same_set(a, MiniWorld().sample(split, 24, seed=7))
    b = world.sample(split, 24, seed=8)
    # Every image of another seed differs (not just some): the seed enters every image's generator.
    assert all(not torch.equal(a.images[i], b.images[i]) for i in range(24))


def test_image_is_a_function_of_its_index(world):
    """``start`` addresses images directly: images 5..11 are the same however they are requested."""
    whole = world.sample("typographic", 12, seed=3)
    tail = world.sample("typographic", 7, seed=3, start=5)
    assert_same_set(tail, whole.subset(torch.arange(5, 12)))


def test_test_splits_never_repeat_pretraining_images(world):
    pretrain = world.sample("pretrain", 12, seed=0)
    clean = world.sample("clean", 12, seed=0)
    assert all(not torch.equal(pretrain.images[i], clean.images[i]) for i in range(12))


def test_images_have_the_configured_shape_and_dtype():
    images = MiniWorld(WorldConfig(image_size=32, min_radius=4, max_radius=12)).sample("clean", 5, 0)
    assert images.images.shape == (5, 3, 32, 32) and images.images.dtype == torch.uint8
    # Not a blank canvas: every image has real contrast.
    assert all(int(img.max()) - int(img.min()) > 60 for img in images.images)


def test_parallel_generation_equals_sequential(world):
    # n >= 2000 is the threshold at which sample() uses a process pool.
    n = 2000
    parallel = world.sample("typographic", n, seed=11, workers=2)
    sequential = world.sample("typographic", n, seed=11, workers=1)
    assert len(parallel) == n
    assert_same_set(parallel, sequential)


@pytest.mark.parametrize("split, classes", [
    ("clean", SHAPE_NAMES), ("typographic", SHAPE_NAMES), ("pretrain", SHAPE_NAMES),
    ("zeroshot-clean", HELDOUT_CLASSES), ("zeroshot-typographic", HELDOUT_CLASSES),
    ("indomain-matching", INDOMAIN_CLASSES), ("indomain-typographic", INDOMAIN_CLASSES),
])
def test_labels_are_balanced_over_the_split_classes(world, split, classes):
    n = 3 * len(classes)
    images = world.sample(split, n, seed=1)
    # Labels index the full class list whatever the subset, so every split is scored against one prompt set.
    assert images.classnames == SHAPE_NAMES
    counts = torch.bincount(images.labels, minlength=len(SHAPE_NAMES))
    expected = torch.zeros(len(SHAPE_NAMES), dtype=torch.long)
    expected[[SHAPE_NAMES.index(c) for c in classes]] = 3
    assert torch.equal(counts, expected)


def test_explicit_class_subset(world):
    images = world.sample("clean", 6, seed=0, classes=("star", "ring"))
    assert [SHAPE_NAMES[i] for i in images.labels] == ["star", "ring"] * 3
    with pytest.raises(ValueError, match="non-empty subset"):
        world.sample("clean", 2, seed=0, classes=("star", "pentagon"))
    with pytest.raises(ValueError, match="non-empty subset"):
        world.sample("clean", 2, seed=0, classes=())


def test_typographic_writes_another_class_on_the_clean_scene(world):
    n = 48
    clean = world.sample("clean", n, seed=5)
    typo = world.sample("typographic", n, seed=5)
    assert torch.equal(clean.labels, typo.labels)
    assert bool((typo.written >= 0).all()) and bool((typo.written != typo.labels).all())
    assert len(set(typo.written.tolist())) > 4  # the written name is drawn at random, not fixed per class
    for i in range(n):
        changed = (clean.images[i] != typo.images[i]).any(0)
        assert bool(changed.any()), f"image {i}: no word written"
        # Same scene: only the pixels under the word differ, a horizontal band well under the image height.
        assert float(changed.float().mean()) < 0.5
        rows = torch.nonzero(changed.any(1)).flatten()
        assert int(rows.max() - rows.min()) + 1 <= 40
        assert SHAPE_NAMES[int(typo.labels[i])] in typo.captions[i]


def test_matching_writes_the_own_label_and_clean_writes_nothing(world):
    matching = world.sample("matching", 24, seed=2)
    assert torch.equal(matching.written, matching.labels)
    clean = world.sample("clean", 24, seed=2)
    assert bool((clean.written == -1).all())
    assert all(not torch.equal(clean.images[i], matching.images[i]) for i in range(24))


def test_zeroshot_typographic_words_may_come_from_any_class(world):
    typo = world.sample("zeroshot-typographic", 40, seed=0)
    assert set(typo.labels.tolist()) == {SHAPE_NAMES.index(c) for c in HELDOUT_CLASSES}
    assert bool((typo.written != typo.labels).all())


@pytest.mark.parametrize("split", ["pretrain", *TEST_KINDS])
def test_captions_name_the_class(world, split):
    images = world.sample(split, 36, seed=4)
    assert len(images.captions) == 36
    for label, caption in zip(images.labels.tolist(), images.captions):
        # Pretraining words are the own class name, so even word-only captions name the class.
        assert SHAPE_NAMES[label] in caption, caption


def test_pretrain_words_are_the_own_class(world):
    images = world.sample("pretrain", 60, seed=0)
    has_word = images.written >= 0
    assert 0 < int(has_word.sum()) < 60  # word_prob = 0.5
    assert torch.equal(images.written[has_word], images.labels[has_word])


def test_pretraining_knobs_do_not_change_a_world_that_leaves_them_off():
    plain = MiniWorld().sample("pretrain", 40, seed=3)
    off = MiniWorld(WorldConfig(other_word_prob=0.0, letters_prob=0.0)).sample("pretrain", 40, seed=3)
    assert torch.equal(plain.images, off.images) and plain.captions == off.captions


def test_other_words_are_captioned_with_both_object_and_word():
    images = MiniWorld(WorldConfig(word_prob=1.0, word_only_prob=0.0, other_word_prob=1.0)).sample("pretrain", 48, 5)
    assert (images.written >= 0).all() and (images.written != images.labels).all()
    for label, written, caption in zip(images.labels.tolist(), images.written.tolist(), images.captions):
        words = caption.split()
        assert SHAPE_NAMES[label] in words and SHAPE_NAMES[written] in words, caption
        assert ("word" in words or "text" in words), caption


def test_letters_occlude_without_meaning_and_the_caption_names_the_object():
    config = WorldConfig(word_prob=0.0, letters_prob=1.0)
    images = MiniWorld(config).sample("pretrain", 36, seed=6)
    plain = MiniWorld(WorldConfig(word_prob=0.0)).sample("pretrain", 36, seed=6)
    assert (images.written == -1).all()
    changed = (images.images != plain.images).flatten(1).any(1)
    assert changed.all()  # a box of letters on every image
    vocab = set(vocabulary())
    for label, caption in zip(images.labels.tolist(), images.captions):
        assert SHAPE_NAMES[label] in caption.split() and "word" not in caption and set(caption.split()) <= vocab


def test_vocabulary_covers_every_caption_and_prompt(world):
    vocab = set(vocabulary())
    from vlalign.models.tokenizer import split_words

    texts = [c for split in ("pretrain", "typographic") for c in world.sample(split, 60, seed=9).captions]
    texts += [f"a photo of a {c}" for c in SHAPE_NAMES]
    assert {w for t in texts for w in split_words(t)} <= vocab


@pytest.mark.parametrize("split", ["dirty", "zeroshot-dirty", "zeroshot", "outdomain-clean", ""])
def test_unknown_split_is_a_clear_value_error(world, split):
    with pytest.raises(ValueError, match=r"unknown split .*expected one of .*zeroshot-typographic"):
        world.sample(split, 3, seed=0)


def test_parse_split():
    assert parse_split("clean") == ("clean", SHAPE_NAMES)
    assert parse_split("zeroshot-matching") == ("matching", HELDOUT_CLASSES)
    assert parse_split("indomain-typographic") == ("typographic", INDOMAIN_CLASSES)
    assert set(HELDOUT_CLASSES) | set(INDOMAIN_CLASSES) == set(SHAPE_NAMES)
    assert not set(HELDOUT_CLASSES) & set(INDOMAIN_CLASSES)


def test_negative_n_is_rejected(world):
    with pytest.raises(ValueError, match="n must be >= 0"):
        world.sample("clean", -1)


@pytest.mark.parametrize("kwargs, message", [
    ({"image_size": 8}, "image_size must be >= 16"),
    ({"word_prob": 1.5}, "word_prob must be in"),
    ({"other_word_prob": -0.1}, "other_word_prob must be in"),
    ({"letters_prob": 2.0}, "letters_prob must be in"),
    ({"min_radius": 30.0}, "min_radius"),
    ({"min_distractors": 3, "max_distractors": 1}, "min_distractors"),
])
def test_world_config_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WorldConfig(**kwargs)


# --- the typographic renderer on arbitrary images -------------------------------------------------------------

@pytest.mark.parametrize("size", [(200, 90), (37, 300), (16, 16), (640, 480)])
def test_typographic_attack_on_any_image_size(size):
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    before = np.asarray(source).copy()
    attacked, word = typographic_attack(source, "star", SHAPE_NAMES, rng, n_instances=2)
    assert attacked.size == size and attacked.mode == "RGB"
    assert word in SHAPE_NAMES and word != "star"
    assert not np.array_equal(np.asarray(attacked), before)
    assert np.array_equal(np.asarray(source), before)  # the input is not modified


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), true_class=st.sampled_from(SHAPE_NAMES),
       width=st.integers(16, 120), height=st.integers(16, 120))
def test_typographic_attack_never_writes_the_true_class(seed, true_class, width, height):
    image = Image.new("RGB", (width, height), (120, 130, 140))
    _, word = typographic_attack(image, true_class, SHAPE_NAMES, np.random.default_rng(seed))
    assert word != true_class and word in SHAPE_NAMES


def test_typographic_attack_is_seeded_and_checks_arguments():
    image = Image.new("RGB", (80, 60), "white")
    a, word_a = typographic_attack(image, "ring", SHAPE_NAMES, np.random.default_rng(3))
    b, word_b = typographic_attack(image, "ring", SHAPE_NAMES, np.random.default_rng(3))
    assert word_a == word_b and np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="at least one class other than"):
        typographic_attack(image, "ring", ["ring"], np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_instances"):
        typographic_attack(image, "ring", SHAPE_NAMES, np.random.default_rng(0), n_instances=0)
    with pytest.raises(ValueError, match="min_size"):
        WordStyle(min_size=0.5, max_size=0.2)


def test_draw_word_stays_inside_the_image():
    for seed in range(30):
        image = Image.new("RGB", (40, 24), (0, 0, 0))
        draw_word(image, "hexagon", np.random.default_rng(seed), WordStyle(min_size=0.9, max_size=1.0, box_prob=0.0))
        ink = np.asarray(image).any(-1)
        assert ink.any()
        # A 2-pixel margin is kept on every side, however large the requested font.
        assert not ink[:1].any() and not ink[-1:].any() and not ink[:, :1].any() and not ink[:, -1:].any()


def test_fonts_come_from_matplotlib_package_data():
    folder = font_dir()
    assert folder == Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    for name in FONT_NAMES:
        font = load_font(name, 12)
        assert Path(font.path).parent == folder
