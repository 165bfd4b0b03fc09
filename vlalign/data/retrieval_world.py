"""The retrieval split of the mini world: scenes of two or three objects, each image with five captions.

Every image shows two or three objects of distinct shapes (the mini world's twelve), each with one of twelve
colours and a small or large size, placed without overlap so that their pairwise relations (left of / above,
along the dominant axis) are visible; half the images also carry a written word in a band at the top or the
bottom. Each image gets five captions from five different templates (:mod:`vlalign.data.scene_captions`), so
the captions of one image are paraphrases stating the same scene in different words and detail.

Splits ``train``, ``val`` and ``test`` come from separate seed streams, so they share no image; every image is a
pure function of (split, seed, index). :func:`ambiguous_caption_share` measures, from the scene attributes,
how many captions describe more than one image of a gallery.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from vlalign.data.canvas import COLOURS, background, draw_distractors, paint_shape
from vlalign.data.retrieval_set import RetrievalSet, concat_retrieval_sets
from vlalign.data.scene_captions import (
    TEMPLATES, Scene, SceneObject, caption_words, scene_captions,
)
from vlalign.data.shapes import SHAPE_NAMES
from vlalign.data.typographic import WordStyle, draw_word
from vlalign.processes import spawn_pool, split_range

#: Words an image may carry: the shape and colour names.
WORDS: tuple[str, ...] = (*SHAPE_NAMES, *COLOURS)
RETRIEVAL_SPLITS: dict[str, int] = {"train": 21, "val": 22, "test": 23}  # split -> seed stream
_CAPTION_STREAM = 1
_WORD_STREAM = 2
_MIN_COLOUR_DISTANCE = 90.0  # RGB distance between an object's colour and the background under it


@dataclass(frozen=True)
class RetrievalWorldConfig:
    """Knobs of the retrieval world; sizes in pixels of a square ``image_size`` image."""

    image_size: int = 64
    min_objects: int = 2
    max_objects: int = 3
    #: Radius ranges of "small" and "large" objects; the gap between them keeps the two sizes apart.
    small_radius: tuple[float, float] = (5.0, 7.0)
    large_radius: tuple[float, float] = (9.5, 12.0)
    #: Free pixels between any two objects' discs.
    min_gap: float = 2.0
    #: Least difference between |dx| and |dy| of any two objects, so that "left of" and "above" are clear.
    min_axis_margin: float = 4.0
    word_prob: float = 0.5
    #: Height of the band that holds the written word, as a fraction of the image side.
    word_band: float = 0.25
    word_style: WordStyle = field(default_factory=lambda: WordStyle(min_size=0.55, max_size=0.85, box_prob=0.3))
    captions_per_image: int = 5
    noise_std: float = 10.0
    max_distractors: int = 1

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")
        if not 2 <= self.min_objects <= self.max_objects <= 3:
            raise ValueError(f"need 2 <= min_objects <= max_objects <= 3, got {self.min_objects}, {self.max_objects}")
        small, large = tuple(self.small_radius), tuple(self.large_radius)
        if not (len(small) == len(large) == 2 and 2 <= small[0] <= small[1] < large[0] <= large[1] <= self.image_size / 5):
            raise ValueError("need 2 <= small_radius[0] <= small_radius[1] < large_radius[0] <= large_radius[1] <= "
                             f"image_size/5, got small_radius={small}, large_radius={large}")
        if not 0 <= self.word_prob <= 1:
            raise ValueError(f"word_prob must be in [0, 1], got {self.word_prob}")
        if not 0.1 <= self.word_band <= 0.4:
            raise ValueError(f"word_band must be in [0.1, 0.4], got {self.word_band}")
        if not 1 <= self.captions_per_image <= len(TEMPLATES):
            raise ValueError(f"captions_per_image must be in [1, {len(TEMPLATES)}], got {self.captions_per_image}")
        if self.min_gap < 0 or self.min_axis_margin < 0 or self.noise_std < 0 or self.max_distractors < 0:
            raise ValueError("min_gap, min_axis_margin, noise_std and max_distractors must be >= 0")


def retrieval_vocabulary() -> list[str]:
    """Every word a retrieval-world caption can contain (sorted)."""
    from vlalign.models.tokenizer import split_words

    words = caption_words() | {w for name in (*SHAPE_NAMES, *COLOURS, *WORDS) for w in split_words(name)}
    return sorted(words)


class RetrievalWorld:
    """Seed-deterministic generator of retrieval-world image sets."""

    def __init__(self, config: RetrievalWorldConfig | None = None) -> None:
        self.config = config or RetrievalWorldConfig()

    def scene_and_image(self, stream: int, seed: int, index: int) -> tuple[Scene, np.ndarray]:
        """Draw and render image ``index``: its scene and uint8 ``[H, W, 3]`` pixels."""
        cfg = self.config
        size = cfg.image_size
        rng = np.random.default_rng([stream, seed, index])
        n_objects = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        word = WORDS[int(rng.integers(len(WORDS)))] if rng.random() < cfg.word_prob else None
        band = int(round(cfg.word_band * size))
        band_top = bool(rng.random() < 0.5)
        y_low, y_high = (band, size) if word and band_top else ((0, size - band) if word else (0, size))
        img = background(rng, size, cfg.noise_std)
        shapes = [SHAPE_NAMES[int(k)] for k in rng.permutation(len(SHAPE_NAMES))[:n_objects]]
        placed = self._place(rng, n_objects, y_low, y_high)
        objects = []
        for shape, (size_name, cx, cy, radius) in zip(shapes, placed):
            angle = rng.uniform(-math.pi / 5, math.pi / 5) if shape in ("heart", "arrow") or rng.random() < 0.5 \
                else rng.uniform(0, 2 * math.pi)
            colour = self._colour(rng, img, cx, cy, radius)
            img = paint_shape(img, rng, shape, colour, cx, cy, radius, angle)
            objects.append(SceneObject(shape, colour, size_name, float(cx), float(cy), float(radius), float(angle)))
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        draw_distractors(pil, rng, 0, cfg.max_distractors)
        if word is not None:
            top = 0 if band_top else size - band
            strip = pil.crop((0, top, size, top + band))
            draw_word(strip, word, np.random.default_rng([stream, seed, index, _WORD_STREAM]), cfg.word_style)
            pil.paste(strip, (0, top))
        return Scene(tuple(objects), word, size), np.asarray(pil)

    def _place(self, rng: np.random.Generator, n: int, y_low: int, y_high: int) -> list[tuple[str, float, float, float]]:
        """Sizes, centres and radii of ``n`` non-overlapping objects inside rows [y_low, y_high)."""
        cfg = self.config
        for _ in range(100):
            placed: list[tuple[str, float, float, float]] = []
            for _ in range(n):
                size_name = "small" if rng.random() < 0.5 else "large"
                radius = float(rng.uniform(*(cfg.small_radius if size_name == "small" else cfg.large_radius)))
                for _ in range(60):
                    cx = float(rng.uniform(radius + 1, cfg.image_size - radius - 1))
                    cy = float(rng.uniform(y_low + radius + 1, y_high - radius - 1))
                    if all(math.hypot(cx - x, cy - y) >= radius + r + cfg.min_gap
                           and abs(abs(cx - x) - abs(cy - y)) >= cfg.min_axis_margin for _, x, y, r in placed):
                        placed.append((size_name, cx, cy, radius))
                        break
                else:
                    break
            if len(placed) == n:
                return placed
        raise RuntimeError(f"could not place {n} objects in a {cfg.image_size}x{y_high - y_low} area; "
                           "lower the radii or min_gap")

    @staticmethod
    def _colour(rng: np.random.Generator, img: np.ndarray, cx: float, cy: float, radius: float) -> str:
        """A colour name far enough (in RGB) from the background under the object to be seen."""
        y0, y1 = max(0, int(cy - radius)), int(cy + radius) + 1
        x0, x1 = max(0, int(cx - radius)), int(cx + radius) + 1
        under = img[y0:y1, x0:x1].reshape(-1, 3).mean(0)
        names = [c for c, rgb in COLOURS.items() if np.linalg.norm(np.asarray(rgb) - under) >= _MIN_COLOUR_DISTANCE]
        names = names or list(COLOURS)
        return names[int(rng.integers(len(names)))]

    def sample(self, split: str, n: int, seed: int = 0, start: int = 0, workers: int = 1) -> RetrievalSet:
        """Images ``start .. start+n-1`` of ``split`` (train, val or test) from ``seed``, with captions, scenes
        and caption claims. ``workers`` > 1 renders chunks in parallel processes; the result is identical."""
        if split not in RETRIEVAL_SPLITS:
            raise ValueError(f"unknown retrieval split {split!r}; expected one of {list(RETRIEVAL_SPLITS)}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if workers > 1 and n >= 1000:
            return self._sample_parallel(split, n, seed, start, workers)
        stream = RETRIEVAL_SPLITS[split]
        size = self.config.image_size
        images = np.empty((n, size, size, 3), dtype=np.uint8)
        scenes, captions, claims = [], [], []
        for row, i in enumerate(range(start, start + n)):
            scene, images[row] = self.scene_and_image(stream, seed, i)
            texts, stated = scene_captions(scene, np.random.default_rng([stream, seed, i, _CAPTION_STREAM]),
                                           self.config.captions_per_image)
            scenes.append(scene)
            captions.append(texts)
            claims.append(stated)
        return RetrievalSet(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), captions, scenes, claims)

    def _sample_parallel(self, split: str, n: int, seed: int, start: int, workers: int) -> RetrievalSet:
        starts, sizes = zip(*split_range(start, n, workers))
        with spawn_pool(workers) as pool:
            parts = list(pool.map(self.sample, [split] * len(starts), sizes, [seed] * len(starts), starts,
                                  [1] * len(starts)))
        return concat_retrieval_sets(parts)


#: How :func:`write_misleading_words` draws its word: about as large as the words of the world's own band
#: (9 to 14 pixels on a 64-pixel image), so a model that learned to read those reads it too.
MISLEADING_WORD_STYLE = WordStyle(min_size=0.14, max_size=0.22, box_prob=0.3)


def write_misleading_words(data: RetrievalSet, seed: int, style: WordStyle = MISLEADING_WORD_STYLE
                           ) -> tuple[RetrievalSet, list[str]]:
    """The typographic attack on a retrieval set: onto a copy of each image, write a shape or colour name that
    its scene does not show (neither an object's shape or colour nor its own written word), at a random place.

    The captions stay those of the original image (the attack must not change what the image is). Needs the
    scenes of a generated set; image i's word, place and style are drawn from ``(seed, i)`` alone. Returns the
    worded set, which carries no scenes or claims (the ground truth no longer describes the pixels exactly), and
    the word written on each image.
    """
    if data.scenes is None:
        raise ValueError("write_misleading_words needs the scenes of a generated retrieval set (data.scenes is None)")
    out, words = [], []
    for i, scene in enumerate(data.scenes):
        shown = {w for obj in scene.objects for w in (obj.shape, obj.colour)} | {scene.word}
        candidates = [w for w in WORDS if w not in shown]
        rng = np.random.default_rng([seed, i])
        pil = Image.fromarray(data.images[i].permute(1, 2, 0).numpy())
        words.append(candidates[int(rng.integers(len(candidates)))])
        draw_word(pil, words[-1], rng, style)
        out.append(torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1))
    return RetrievalSet(torch.stack(out).contiguous(), [list(c) for c in data.captions]), words
