"""Property-based tests (hypothesis) of the image-folder loader and the typographic renderer: random sizes,
modes, unicode class names, tiny and huge images."""

from __future__ import annotations

import json
import tempfile
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlalign.data import folder as folder_module
from vlalign.data.folder import ImageLoadWarning, load_image_folder
from vlalign.data.fonts import FONT_NAMES, load_font, missing_glyphs
from vlalign.data.pixels import to_rgb
from vlalign.data.typographic import MIN_FONT_PIXELS, WordClippedWarning, WordStyle, draw_word, typographic_attack

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Class names as people write them: letters of any script, digits, spaces, hyphens and apostrophes.
CLASS_NAME = st.text(st.characters(whitelist_categories=("Lu", "Ll", "Lt", "Lo", "Nd"), whitelist_characters=" -'"),
                     min_size=1, max_size=14).filter(lambda s: s.strip() != "")

#: mode -> (constant pixel value for Image.new, the RGB the loader must read it as)
MODES = {
    "RGB": lambda v: ((v, 255 - v, v // 2), (v, 255 - v, v // 2)),
    "L": lambda v: (v, (v, v, v)),
    "1": lambda v: (v % 2, (255, 255, 255) if v % 2 else (0, 0, 0)),
    "I;16": lambda v: (v * 257, (v, v, v)),
    "I": lambda v: (v * 257, (v, v, v)),
    "F": lambda v: (v / 255, (v, v, v)),
    # Half-transparent over white: c·a + 255·(1 − a).
    "LA": lambda v: ((v, 128), (round(v * 128 / 255 + 255 * 127 / 255),) * 3),
    "RGBA": lambda v: ((v, 0, 255, 0), (255, 255, 255)),
    "CMYK": lambda v: ((0, 0, 0, v), (255 - v,) * 3),
}

IMAGE = st.tuples(st.integers(1, 96), st.integers(1, 96), st.sampled_from(sorted(MODES)), st.integers(0, 255))


def write_folder(root: Path, images: list, classes: list[str]) -> None:
    (root / "images").mkdir(parents=True)
    lines = []
    for i, (width, height, mode, value) in enumerate(images):
        fill, _ = MODES[mode](value)
        suffix = ".tiff" if mode in ("F", "I", "CMYK") else ".png"  # PNG cannot hold these modes
        name = f"images/{i}{suffix}"
        Image.new(mode, (width, height), fill).save(root / name)
        lines.append(json.dumps({"file_name": name, "label": classes[i % len(classes)],
                                 "written": [classes[(i + 1) % len(classes)]] if i % 2 else None},
                                ensure_ascii=False))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "classes.json").write_text(json.dumps(classes, ensure_ascii=False), encoding="utf-8")


@SETTINGS
@given(images=st.lists(IMAGE, min_size=1, max_size=5), classes=st.lists(CLASS_NAME, min_size=1, max_size=4, unique=True),
       size=st.sampled_from([8, 16, 32]))
def test_loader_reads_any_size_and_mode_faithfully(images, classes, size):
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        root = Path(tmp)
        write_folder(root, images, classes)
        loaded = load_image_folder(root, image_size=size)
    assert tuple(loaded.images.shape) == (len(images), 3, size, size)
    assert loaded.classnames == tuple(classes)
    assert loaded.labels.tolist() == [i % len(classes) for i in range(len(images))]
    for i, (_, _, mode, value) in enumerate(images):
        _, expected = MODES[mode](value)
        # A constant image stays constant through any resize; the mode conversion decides its value.
        pixels = loaded.images[i].reshape(3, -1).int()
        assert (pixels - torch.tensor(expected)[:, None]).abs().max() <= 1, (mode, value, pixels[:, 0].tolist(), expected)
    # The distortion counts match an independent count, and each kind present raised one warning.
    aspect = sum(max(w, h) > 3 * min(w, h) and (w, h) != (size, size) for w, h, _, _ in images)
    upscaled = sum(size > 4 * min(w, h) for w, h, _, _ in images)
    assert loaded.load_warnings == {"extreme_aspect_ratio": aspect, "upscaled": upscaled, "huge": 0}
    load_warnings = [w for w in caught if issubclass(w.category, ImageLoadWarning)]
    assert len(load_warnings) == (aspect > 0) + (upscaled > 0)


def test_huge_images_are_counted_and_warned_about(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_module, "HUGE_PIXELS", 100)  # an 11x11 image is "huge" here
    write_folder(tmp_path, [(11, 11, "RGB", 5), (8, 8, "RGB", 5)], ["a"])
    with pytest.warns(ImageLoadWarning, match=r"1 of 2 images have more than 0.0001 megapixels"):
        loaded = load_image_folder(tmp_path, image_size=8)
    assert loaded.load_warnings["huge"] == 1


def test_ordinary_images_load_without_warnings(tmp_path):
    write_folder(tmp_path, [(64, 48, "RGB", 5), (40, 64, "L", 9)], ["a", "b"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_image_folder(tmp_path, image_size=32)
    assert loaded.load_warnings == {"extreme_aspect_ratio": 0, "upscaled": 0, "huge": 0}


# --- the typographic renderer --------------------------------------------------------------------------------

RENDER_MODES = ["RGB", "L", "RGBA", "P", "1", "I;16", "I", "F", "CMYK", "LA"]


@SETTINGS
@given(width=st.integers(1, 320), height=st.integers(1, 320), mode=st.sampled_from(RENDER_MODES),
       classes=st.lists(CLASS_NAME, min_size=2, max_size=5, unique=True), seed=st.integers(0, 2**32 - 1),
       instances=st.integers(1, 3))
def test_typographic_attack_writes_a_visible_word_or_says_why_not(width, height, mode, classes, seed, instances):
    image = Image.new(mode, (width, height))
    before = np.asarray(image).copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            attacked, word = typographic_attack(image, classes[0], classes, np.random.default_rng(seed), instances)
        except ValueError as exc:
            # Only a class name the fonts cannot write refuses, and it says so.
            assert "no glyph" in str(exc), exc
            assert any(all(missing_glyphs(font, c) for font in FONT_NAMES) for c in classes[1:]), exc
            return
    assert attacked.mode == "RGB" and attacked.size == (width, height)
    assert word in classes[1:]
    assert np.array_equal(np.asarray(image), before)  # the input is never drawn on
    clipped = [w for w in caught if issubclass(w.category, WordClippedWarning)]
    if min(width, height) >= 60 and len(word) <= 6:
        assert not clipped  # a short word always fits a 60-pixel image
    if width >= 8 and height >= 8:
        assert not np.array_equal(np.asarray(attacked), np.asarray(to_rgb(image)))  # the word shows


def smallest_extent(word: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(largest, smallest) width x height of ``word`` at the smallest font size over the fonts that can draw it."""
    boxes = [load_font(font, MIN_FONT_PIXELS).getbbox(word) for font in FONT_NAMES if not missing_glyphs(font, word)]
    sizes = [(right - left, bottom - top) for left, top, right, bottom in boxes]
    return (max(w for w, _ in sizes), max(h for _, h in sizes)), (min(w for w, _ in sizes), min(h for _, h in sizes))


@SETTINGS
@given(word=CLASS_NAME, width=st.integers(1, 400), height=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
def test_a_word_is_drawn_inside_when_it_fits_and_cut_with_a_warning_when_not(word, width, height, seed):
    # On a white canvas without a backing box, ink is the only non-white pixel.
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            draw_word(canvas, word, np.random.default_rng(seed), WordStyle(min_size=0.05, max_size=0.2, box_prob=0.0))
        except ValueError as exc:
            assert "no glyph" in str(exc) and all(missing_glyphs(font, word) for font in FONT_NAMES), exc
            return
    clipped = any(issubclass(w.category, WordClippedWarning) for w in caught)
    ink = np.asarray(canvas).min(axis=2) < 250
    (widest, tallest), (narrowest, shortest) = smallest_extent(word)
    if widest + 4 <= width and tallest + 4 <= height:
        # Fits with its 2-pixel margin in any font at the smallest size, so the shrinking finds a fit: no ink on
        # the border rows or columns (which would mean the word runs off the image), and no warning.
        assert not clipped
        assert not (ink[0].any() or ink[-1].any() or ink[:, 0].any() or ink[:, -1].any())
        if len(word.strip()) >= 1 and widest > 1:
            assert ink.any()
    if narrowest > width or shortest > height:
        assert clipped  # no font fits it: the cut is reported


def test_a_word_longer_than_a_tiny_image_is_cut_with_a_warning():
    # At the smallest font size "traffic light" is 47 pixels wide: it used to be cut to "traffic li" silently.
    with pytest.warns(WordClippedWarning, match=r"'traffic light' does not fit a 40x40 image"):
        typographic_attack(Image.new("RGB", (40, 40)), "star", ["star", "traffic light"], np.random.default_rng(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attacked, _ = typographic_attack(Image.new("RGB", (40, 40)), "star", ["star", "moon"], np.random.default_rng(0))
    assert np.asarray(attacked).any()


@pytest.mark.parametrize("word", ["", "   ", "tab\there", "new\nline", "\x00", "猫", "고양이"])
def test_words_that_cannot_be_written_are_refused(word):
    with pytest.raises(ValueError, match="cannot draw"):
        draw_word(Image.new("RGB", (200, 100)), word, np.random.default_rng(0))


def test_scripts_the_fonts_cover_are_drawn():
    for word in ("chat", "Käfer", "кошка", "γάτα", "naïve café"):
        canvas = Image.new("RGB", (300, 100), (255, 255, 255))
        draw_word(canvas, word, np.random.default_rng(1), WordStyle(box_prob=0.0))
        assert (np.asarray(canvas) < 250).any(), word
        assert all(unicodedata.category(c) != "Cc" for c in word)


def test_ordinary_output_is_unchanged():
    """The renderer's output for ordinary inputs, hashed before the robustness fixes; a change here changes
    every typographic dataset and the shipped model's pretraining data."""
    import hashlib

    digest = hashlib.sha256()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        width, height = [(64, 64), (224, 224), (300, 200), (120, 60), (96, 96)][seed % 5]
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        out, word = typographic_attack(image, "star", ["star", "heart", "traffic light", "moon"], rng,
                                       n_instances=1 + seed % 3)
        digest.update(np.asarray(out).tobytes())
        digest.update(word.encode())
        canvas = Image.new("RGB", (width, height), (seed * 5 % 256, 100, 30))
        draw_word(canvas, "hexagon", rng, WordStyle())
        digest.update(np.asarray(canvas).tobytes())
    assert digest.hexdigest() == "f39802f245742fbd34b65f9e6bde521dbdc3afa13a7954a5b7058bb9b95f68dd"
