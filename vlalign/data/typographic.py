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


@dataclass(frozen=True)
class WordLayout:
    """Where and how a word is drawn: font and size, text origin, ink box, backing box and colours.

    ``box`` = (x0, y0, x1, y1), exclusive on the right and bottom, holds every pixel drawing the word changes.
    """

    word: str
    font_name: str
    size: int
    origin: tuple[int, int]
    ink: tuple[int, int, int, int]
    box_colour: tuple[int, int, int] | None
    text_colour: tuple[int, int, int]

    @property
    def box(self) -> tuple[int, int, int, int]:
        left, top, right, bottom = self.ink
        if self.box_colour is not None:  # the backing rectangle is drawn 2 pixels around the ink, both ends inclusive
            return left - 2, top - 2, right + 2, bottom + 2
        return left, top, right, bottom


def layout_word(image: Image.Image, word: str, rng: np.random.Generator, style: WordStyle = WordStyle()) -> WordLayout:
    """Choose font, size, position, backing box and colours for ``word`` on ``image`` (nothing is drawn).

    Draws from ``rng`` exactly as :func:`draw_word` does. Raises ValueError (see :func:`check_drawable`) for a
    word that cannot be written; warns with :class:`WordClippedWarning` when the word cannot fit ``image``.
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
            f"{text_w}x{text_h} pixels): it is cut off at the border"), stacklevel=3)
    # Where the word fits but its margin does not, the clamp keeps it inside; elsewhere it changes nothing.
    x = int(rng.integers(2, max(3, width - text_w - 1)))
    y = int(rng.integers(2, max(3, height - text_h - 1)))
    x = (min(x, width - text_w) if text_w <= width else x) - left
    y = (min(y, height - text_h) if text_h <= height else y) - top
    ink = (x + left, y + top, x + right, y + bottom)
    box_colour = None
    if rng.random() < style.box_prob:
        box_colour = _random_colour(rng)
        backdrop = _luminance(box_colour)
    else:
        region = np.asarray(image.crop(ink))
        backdrop = float(region.reshape(-1, region.shape[-1])[:, :3].mean(0) @ [0.299, 0.587, 0.114]) if region.size else 128.0
    text_colour = _contrasting_colour(rng, backdrop, style.min_contrast)
    return WordLayout(word, font_name, size, (x, y), ink, box_colour, text_colour)


def paint_word(image: Image.Image, layout: WordLayout, text: str | None = None) -> Image.Image:
    """Draw ``layout`` onto ``image`` (in place; returned). ``text`` replaces the laid-out word: it is centred on
    the word's ink box in the same font, and must fit inside it (see :func:`nonsense_letters`)."""
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = layout.ink
    if layout.box_colour is not None:
        draw.rectangle((left - 2, top - 2, right + 1, bottom + 1), fill=layout.box_colour)
    origin = layout.origin
    if text is not None and text != layout.word:
        font = load_font(layout.font_name, layout.size)
        l2, t2, r2, b2 = font.getbbox(text)
        if r2 - l2 > right - left or b2 - t2 > bottom - top:
            raise ValueError(f"{text!r} does not fit inside the box of {layout.word!r} ({right - left}x{bottom - top} "
                             f"pixels) at size {layout.size}")
        origin = (left + (right - left - (r2 - l2)) // 2 - l2, top + (bottom - top - (b2 - t2)) // 2 - t2)
    draw.text(origin, layout.word if text is None else text, font=load_font(layout.font_name, layout.size),
              fill=layout.text_colour)
    return image


def draw_word(image: Image.Image, word: str, rng: np.random.Generator, style: WordStyle = WordStyle()) -> Image.Image:
    """Draw ``word`` once onto ``image`` (modified in place and returned), fully inside its borders.

    Raises ValueError (see :func:`check_drawable`) for a word that cannot be written. An image too small to hold
    the word at the smallest legible size (:data:`MIN_FONT_PIXELS`) gets it cut off at the border, with a
    :class:`WordClippedWarning`.
    """
    return paint_word(image, layout_word(image, word, rng, style))


#: The letters the non-reading control writes: lowercase, as the class names are written.
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@lru_cache(maxsize=512)
def _letter_extents(font_name: str, size: int) -> dict[str, tuple[int, int, float]]:
    """Each letter's ink top, ink bottom and advance width in ``font_name`` at ``size``."""
    font = load_font(font_name, size)
    return {c: (font.getbbox(c)[1], font.getbbox(c)[3], font.getlength(c)) for c in LETTERS}


def nonsense_letters(layout: WordLayout, rng: np.random.Generator, forbidden: frozenset[str] | set[str],
                     tries: int = 200) -> str:
    """Random lowercase letters, as many as ``layout.word`` has, that fit inside its ink box in its font and size,
    and that neither are nor contain a ``forbidden`` word of three letters or more, nor are one of shorter ones
    (class names, the model's vocabulary). Prefixes are not excluded: a draw may begin like a class name
    (``diamvitg``): 13 of 180,000 draws measured (60,000 seeds on each of three class-name layouts).

    The non-reading control writes them in place of a class name: same scene, box, font, size and colours, no
    meaning. Letters are drawn uniformly from those that fit the word's height (a word without ascenders gets
    none), and whole draws are rejected until the text fits the word's width; if ``tries`` draws do not, the
    widest letter of a draw is swapped for a narrower one until it does (200 more draws). Narrow letters are thus slightly
    favoured over wide ones.
    """
    font = load_font(layout.font_name, layout.size)
    left, top, right, bottom = font.getbbox(layout.word)
    extents = _letter_extents(layout.font_name, layout.size)
    allowed = [c for c in LETTERS if extents[c][0] >= top and extents[c][1] <= bottom] or list(LETTERS)
    width = {c: extents[c][2] for c in allowed}
    long_words = [w for w in forbidden if len(w) >= 3]

    def fits(text: str) -> bool:
        l2, t2, r2, b2 = font.getbbox(text)
        return r2 - l2 <= right - left and b2 - t2 <= bottom - top

    def meaningless(text: str) -> bool:
        return text not in forbidden and not any(w in text for w in long_words)

    for attempt in range(tries + 200):
        letters = [allowed[int(i)] for i in rng.integers(len(allowed), size=len(layout.word))]
        if attempt >= tries:  # narrow the draw until it fits
            while not fits("".join(letters)):
                widest = max(range(len(letters)), key=lambda k: width[letters[k]])
                narrower = [c for c in allowed if width[c] < width[letters[widest]]]
                if not narrower:
                    break
                letters[widest] = narrower[int(rng.integers(len(narrower)))]
        text = "".join(letters)
        if meaningless(text) and fits(text):
            return text
    raise ValueError(f"no {len(layout.word)} random letters fit the box of {layout.word!r} "
                     f"({layout.font_name}, {layout.size} px)")


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
