"""The non-reading control split: the typographic split's scenes and word boxes, with letters that mean nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlalign.data.mini_world import WorldConfig, forbidden_words, vocabulary
from vlalign.data.shapes import SHAPE_NAMES
from vlalign.data.typographic import WordStyle, layout_word, nonsense_letters, paint_word

N, SEED = 96, 7


@pytest.fixture(scope="module")
def splits(world):
    return {kind: world.sample(kind, N, SEED) for kind in ("clean", "typographic", "nonreading")}


def _letters(image_set) -> list[str]:
    # The control's captions end with the letters written: "... and the letters xvrvv".
    return [caption.rsplit(" ", 1)[1] for caption in image_set.captions]


def _bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_control_differs_from_the_typographic_image_only_inside_the_word_box(splits):
    clean, typo, control = (splits[k].images.permute(0, 2, 3, 1).numpy() for k in ("clean", "typographic", "nonreading"))
    assert torch.equal(splits["nonreading"].labels, splits["typographic"].labels)
    for i in range(N):
        word_pixels = (typo[i] != clean[i]).any(-1)  # the box and the class name written on the same scene
        x0, y0, x1, y1 = _bounding_box(word_pixels)
        changed = (control[i] != typo[i]).any(-1)
        assert changed.any(), f"image {i}: the control shows the same text as the typographic image"
        inside = np.zeros_like(changed)
        inside[max(0, y0 - 1):y1 + 1, max(0, x0 - 1):x1 + 1] = True  # 1 pixel of anti-aliasing either way
        assert not (changed & ~inside).any(), f"image {i}: the control changed pixels outside the word's box"
        # and the control's own text is there: it differs from the clean scene in the same region only
        assert not ((control[i] != clean[i]).any(-1) & ~inside).any()


def test_paint_with_other_letters_stays_in_the_layouts_box():
    rng = np.random.default_rng(3)
    for trial in range(40):
        base = Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8))
        word = SHAPE_NAMES[trial % len(SHAPE_NAMES)]
        style = WordStyle(box_prob=0.5)
        layout = layout_word(base, word, np.random.default_rng(trial), style)
        with_word = np.asarray(paint_word(base.copy(), layout)).astype(int)
        letters = nonsense_letters(layout, np.random.default_rng(100 + trial), forbidden_words())
        with_letters = np.asarray(paint_word(base.copy(), layout, letters)).astype(int)
        x0, y0, x1, y1 = layout.box
        for drawn in (with_word, with_letters):
            changed = (drawn != np.asarray(base)).any(-1)
            changed[max(0, y0):y1, max(0, x0):x1] = False
            assert not changed.any(), f"{word!r} / {letters!r}: pixels changed outside {layout.box}"
        # the same layout drawn twice through draw_word's path is the same image
        assert np.array_equal(with_word, np.asarray(paint_word(base.copy(), layout, word)).astype(int))


def test_no_control_word_is_a_class_name_or_a_known_word(splits, mini_model):
    letters = _letters(splits["nonreading"])
    words = [SHAPE_NAMES[int(w)] for w in splits["typographic"].written]
    assert [len(x) for x in letters] == [len(w) for w in words]  # as long as the class name it replaces
    assert bool((splits["nonreading"].written == -1).all())  # no class name is written
    known = set(vocabulary()) | set(SHAPE_NAMES)
    for text in letters:
        assert text.isalpha() and text.islower()
        assert text not in known and not any(name in text for name in SHAPE_NAMES)
        assert mini_model.unknown_words([text]) == [text]  # the shipped model's tokenizer does not know it
    assert len(set(letters)) > 0.9 * len(letters)  # random, not one fixed string


def test_nonsense_letters_fit_even_when_no_free_draw_does():
    # tries=0 goes straight to narrowing the widest letters, which always ends inside the box.
    image = Image.new("RGB", (64, 64))
    for seed in range(30):
        for word in ("cross", "circle", "star"):
            layout = layout_word(image, word, np.random.default_rng(seed), WorldConfig().word_style)
            text = nonsense_letters(layout, np.random.default_rng(seed), forbidden_words(), tries=0)
            assert len(text) == len(word) and text not in forbidden_words()
            paint_word(image.copy(), layout, text)  # raises if it did not fit


def test_control_is_deterministic_and_in_every_class_subset(world):
    a = world.sample("zeroshot-nonreading", 12, 3)
    b = world.sample("zeroshot-nonreading", 12, 3)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    held_out = world.sample("zeroshot-typographic", 12, 3)
    assert torch.equal(a.labels, held_out.labels)
