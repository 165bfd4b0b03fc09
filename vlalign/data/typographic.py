"""Typographic attacks: render words onto images (Azuma & Matsui 2023 style).

A typographic attack writes a class name that is *not* the image's class somewhere on the image, with a
random font, size, colour, optional backing box and position. The same renderer draws the words of the mini
world's pretraining data and attacks any user image folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from vlalign.data.fonts import FONT_NAMES, load_font


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


def draw_word(image: Image.Image, word: str, rng: np.random.Generator, style: WordStyle = WordStyle()) -> Image.Image:
    """Draw ``word`` once onto ``image`` (modified in place and returned), fully inside its borders."""
    if not word:
        raise ValueError("cannot draw an empty word")
    width, height = image.size
    side = min(width, height)
    font_name = FONT_NAMES[int(rng.integers(len(FONT_NAMES)))]
    size = max(6, int(round(side * rng.uniform(style.min_size, style.max_size))))
    font = load_font(font_name, size)
    left, top, right, bottom = font.getbbox(word)
    # Shrink until the word fits with a 2-pixel margin.
    while (right - left > width - 4 or bottom - top > height - 4) and size > 6:
        size = max(6, int(size * 0.85))
        font = load_font(font_name, size)
        left, top, right, bottom = font.getbbox(word)
    text_w, text_h = right - left, bottom - top
    x = int(rng.integers(2, max(3, width - text_w - 1))) - left
    y = int(rng.integers(2, max(3, height - text_h - 1))) - top
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

    Returns the attacked image and the written class name. Works on images of any size: word sizes are
    fractions of the shorter side.
    """
    others = [c for c in classnames if c != true_class]
    if not others:
        raise ValueError(f"need at least one class other than {true_class!r} to attack with, got {list(classnames)}")
    if n_instances < 1:
        raise ValueError(f"n_instances must be >= 1, got {n_instances}")
    word = others[int(rng.integers(len(others)))]
    attacked = image.convert("RGB").copy()
    for _ in range(n_instances):
        draw_word(attacked, word, rng, style)
    return attacked, word
