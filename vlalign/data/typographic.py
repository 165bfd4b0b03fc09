"""Typographic attacks: render words onto images (Azuma & Matsui 2023 style).

A typographic attack writes a class name that is *not* the image's class somewhere on the image, with a
random font, size, colour, optional backing box and position. The same renderer draws the words of the mini
world's pretraining data and attacks any user image folder.
"""

from __future__ import annotations

import unicodedata
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from vlalign.data.fonts import FONT_NAMES, load_font, missing_glyphs
from vlalign.data.pixels import to_rgb


@dataclass(frozen=True)
class WordStyle:
    """How words are drawn. Sizes are fractions of the image's shorter side."""

    min_size: float = 0.18
    max_size: float = 0.38
    box_prob: float = 0.5
    min_contrast: float = 90.0

    def __post_init__(self) -> None:
        if not 0 < self.min_size <= self.max_size <= 1:
            raise ValueError(f"need 0 < min_size <= max_size <= 1, got {self.min_size}, {self.max_size}")
        if not 0 <= self.box_prob <= 1:
            raise ValueError(f"box_prob must be in [0, 1], got {self.box_prob}")


def _luminance(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def _contrasting_colour(rng: np.random.Generator, against: float, min_contrast: float) -> tuple[int, int, int]:
    for _ in range(8):
        colour = _random_colour(rng)
        if abs(_luminance(colour) - against) >= min_contrast:
            return colour
    return (0, 0, 0) if against > 127 else (255, 255, 255)


#: Smallest font size in pixels: below it a word is no longer legible, so it is no attack.
MIN_FONT_PIXELS = 6


class WordClippedWarning(UserWarning):
    """A word did not fit its image even at the smallest font size and was cut off at the border."""


@lru_cache(maxsize=4096)
def _undrawable(word: str) -> str | None:
    if not word or not word.strip():
        return f"cannot draw an empty or blank word, got {word!r}"
    control = sorted({c for c in word if unicodedata.category(c) in ("Cc", "Cs")})
    if control:
        return f"cannot draw {word!r}: it holds control characters {control}"
    if all(missing_glyphs(name, word) for name in FONT_NAMES):
        return (f"cannot draw {word!r}: the DejaVu fonts have no glyph for "
                f"{''.join(missing_glyphs(FONT_NAMES[0], word))!r}, so it would be written as empty boxes")
    return None


def check_drawable(word: str) -> None:
    """Raise ValueError when ``word`` cannot be written as text: empty or blank, holding control characters,
    or characters none of the fonts has a glyph for (they would render as empty boxes)."""
    problem = _undrawable(word)
    if problem is not None:
        raise ValueError(problem)


def _font_for(word: str, picked: str) -> str:
    """``picked`` when it has every glyph of ``word``, else the first font that does (no extra random draw, so
    words every font covers are rendered exactly as before)."""
    if not missing_glyphs(picked, word):
        return picked
    return next(name for name in FONT_NAMES if not missing_glyphs(name, word))


def draw_word(image: Image.Image, word: str, rng: np.random.Generator, style: WordStyle = WordStyle()) -> Image.Image:
    """Draw ``word`` once onto ``image`` (modified in place and returned), fully inside its borders.

    Raises ValueError (see :func:`check_drawable`) for a word that cannot be written. An image too small to hold
    the word at the smallest legible size (:data:`MIN_FONT_PIXELS`) gets it cut off at the border, with a
    :class:`WordClippedWarning`.
    """
    check_drawable(word)
    width, height = image.size
    side = min(width, height)
    font_name = _font_for(word, FONT_NAMES[int(rng.integers(len(FONT_NAMES)))])
    size = max(MIN_FONT_PIXELS, int(round(side * rng.uniform(style.min_size, style.max_size))))
    font = load_font(font_name, size)
    left, top, right, bottom = font.getbbox(word)
    # Shrink until the word fits with a 2-pixel margin.
    while (right - left > width - 4 or bottom - top > height - 4) and size > MIN_FONT_PIXELS:
        size = max(MIN_FONT_PIXELS, int(size * 0.85))
        font = load_font(font_name, size)
        left, top, right, bottom = font.getbbox(word)
    text_w, text_h = right - left, bottom - top
    if text_w > width or text_h > height:
        warnings.warn(WordClippedWarning(
            f"{word!r} does not fit a {width}x{height} image even at the smallest font size ({MIN_FONT_PIXELS} px, "
            f"{text_w}x{text_h} pixels): it is cut off at the border"), stacklevel=2)
    # Where the word fits but its margin does not, the clamp keeps it inside; elsewhere it changes nothing.
    x = int(rng.integers(2, max(3, width - text_w - 1)))
    y = int(rng.integers(2, max(3, height - text_h - 1)))
    x = (min(x, width - text_w) if text_w <= width else x) - left
    y = (min(y, height - text_h) if text_h <= height else y) - top
    draw = ImageDraw.Draw(image)
    if rng.random() < style.box_prob:
        box_colour = _random_colour(rng)
        draw.rectangle((x + left - 2, y + top - 2, x + right + 1, y + bottom + 1), fill=box_colour)
        backdrop = _luminance(box_colour)
    else:
        region = np.asarray(image.crop((x + left, y + top, x + right, y + bottom)))
        backdrop = float(region.reshape(-1, region.shape[-1])[:, :3].mean(0) @ [0.299, 0.587, 0.114]) if region.size else 128.0
    draw.text((x, y), word, font=font, fill=_contrasting_colour(rng, backdrop, style.min_contrast))
    return image


def typographic_attack(
    image: Image.Image,
    true_class: str,
    classnames: list[str] | tuple[str, ...],
    rng: np.random.Generator,
    n_instances: int = 1,
    style: WordStyle = WordStyle(min_size=0.08, max_size=0.2),
) -> tuple[Image.Image, str]:
    """Write a random class name other than ``true_class`` ``n_instances`` times onto a copy of ``image``.

    Returns the attacked image and the written class name. Works on images of any size and mode (read with
    :func:`~vlalign.data.pixels.to_rgb`): word sizes are fractions of the shorter side; a word too long for a
    tiny image is cut off with a :class:`WordClippedWarning`.
    """
    others = [c for c in classnames if c != true_class]
    if not others:
        raise ValueError(f"need at least one class other than {true_class!r} to attack with, got {list(classnames)}")
    if n_instances < 1:
        raise ValueError(f"n_instances must be >= 1, got {n_instances}")
    for name in others:  # every candidate, so an undrawable class fails at once, not on a random image
        check_drawable(name)
    word = others[int(rng.integers(len(others)))]
    attacked = to_rgb(image).copy()
    for _ in range(n_instances):
        draw_word(attacked, word, rng, style)
    return attacked, word
