"""Mini-world question answering and captioning: the data a generative VLM is pretrained and attacked on.

Every item is a pure function of (seed, index): the scene, the question's phrasing and the answer come from a
generator seeded with ``[stream, seed, index]``, so splits are reproducible and seeds never overlap.

Question types (item ``i`` asks type ``question_types[i % len(question_types)]``), each with a short canonical
answer:

- ``shape`` — "what shape is this?" -> ``circle`` (one object, 12 classes);
- ``colour`` — "what colour is the shape?" -> ``red`` (12 palette colours);
- ``where`` — "where is the shape?" -> ``top left`` / ``top right`` / ``bottom left`` / ``bottom right`` (the object
  lies inside that quadrant);
- ``word`` — "what word is written?" -> the class name written on the image (another class's object is drawn too,
  so reading is needed);
- ``count`` — "how many shapes are there?" -> ``1`` … ``4`` (digits, which VQA's normalization maps number words to).

Captions describe one-object scenes ("a red circle in the top left", plus "with the word star" when a word is
written); :meth:`MiniCaptions.references` gives paraphrases for CIDEr.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

from vlalign.data.mini_world import COLOURS, WorldConfig, render_scene
from vlalign.data.shapes import SHAPE_NAMES

QUESTION_TYPES: tuple[str, ...] = ("shape", "colour", "where", "word", "count")
QUADRANTS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
MAX_COUNT = 4
QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "shape": ("what shape is this?", "what is the shape in the image?"),
    "colour": ("what colour is the shape?", "what colour is it?"),
    "where": ("where is the shape?", "in which corner is the shape?"),
    "word": ("what word is written?", "what does the text say?"),
    "count": ("how many shapes are there?", "how many objects are in the image?"),
}
CAPTION_PROMPT = "describe the image."
_CAPTION_TEMPLATES = ("a {colour} {shape} in the {where}", "there is a {colour} {shape} at the {where}",
                      "the {where} shows a {colour} {shape}")
_WORD_SUFFIXES = (" with the word {word}", " and the text {word}", " with {word} written on it")

_STREAM_VQA = 21
_STREAM_CAPTIONS = 22


def answer_choices(question_type: str) -> tuple[str, ...]:
    """Every canonical answer of a question type (what a targeted attack picks its wrong answer from)."""
    choices = {"shape": SHAPE_NAMES, "colour": tuple(COLOURS), "where": QUADRANTS, "word": SHAPE_NAMES,
               "count": tuple(str(k) for k in range(1, MAX_COUNT + 1))}
    if question_type not in choices:
        raise ValueError(f"unknown question type {question_type!r}; expected one of {list(QUESTION_TYPES)}")
    return choices[question_type]


@lru_cache(maxsize=1)
def vlm_vocabulary() -> tuple[str, ...]:
    """Every word of the questions, answers, captions and the caption prompt (sorted)."""
    from vlalign.models.tokenizer import split_words

    texts = [t for ts in QUESTION_TEMPLATES.values() for t in ts] + [CAPTION_PROMPT]
    texts += [t.format(colour="", shape="", where="", word="") for t in (*_CAPTION_TEMPLATES, *_WORD_SUFFIXES)]
    texts += [a for q in QUESTION_TYPES for a in answer_choices(q)]
    return tuple(sorted({w for t in texts for w in split_words(t)}))


# ------------------------------------------------------------------------------------------------ scenes

def _one_object_scene(rng: np.random.Generator, cfg: WorldConfig, word: str | None = None,
                      shape: str | None = None) -> tuple[np.ndarray, dict]:
    """One object inside a random quadrant (radius 7 to 13/64 of the side), optionally a written word."""
    size = cfg.image_size
    half = size / 2
    quadrant = int(rng.integers(len(QUADRANTS)))
    shape = shape if shape is not None else SHAPE_NAMES[int(rng.integers(len(SHAPE_NAMES)))]
    radius = rng.uniform(7 / 64 * size, 13 / 64 * size)
    col, row = quadrant % 2, quadrant // 2
    cx = rng.uniform(col * half + radius + 1, (col + 1) * half - radius - 1)
    cy = rng.uniform(row * half + radius + 1, (row + 1) * half - radius - 1)
    angle = rng.uniform(-math.pi / 5, math.pi / 5) if shape in ("heart", "arrow") else rng.uniform(0, 2 * math.pi)
    image, colours = render_scene(rng, [(shape, None, cx, cy, radius, angle)], word, cfg)
    return image, {"shape": shape, "colour": colours[0], "where": QUADRANTS[quadrant], "word": word}


def _count_scene(rng: np.random.Generator, cfg: WorldConfig) -> tuple[np.ndarray, dict]:
    """1 to ``MAX_COUNT`` non-overlapping small objects (radius 5 to 9/64 of the side)."""
    size = cfg.image_size
    count = int(rng.integers(1, MAX_COUNT + 1))
    placed: list[tuple[float, float, float]] = []
    while len(placed) < count:
        radius = rng.uniform(5 / 64 * size, 9 / 64 * size)
        cx, cy = rng.uniform(radius + 1, size - radius - 1, size=2)
        # Rejection sampling always succeeds quickly: four objects of radius <= 9 fill a fifth of a 64-pixel image.
        if all(math.hypot(cx - x, cy - y) > radius + r + 2 for x, y, r in placed):
            placed.append((float(cx), float(cy), float(radius)))
    objects = [(SHAPE_NAMES[int(rng.integers(len(SHAPE_NAMES)))], None, cx, cy, r, rng.uniform(0, 2 * math.pi))
               for cx, cy, r in placed]
    image, _ = render_scene(rng, objects, None, cfg)
    return image, {"count": str(count)}


def _pixels(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------------------------------------- datasets

class MiniVQA(Dataset):
    """``n`` mini-world questions with canonical answers; item ``i`` is a pure function of (seed, i).

    Items: ``{"index", "pixels" (uint8 [3, H, W]), "prompt", "answer", "question_type"}``.
    """

    def __init__(self, n: int, seed: int = 0, question_types: tuple[str, ...] | list[str] = QUESTION_TYPES,
                 config: WorldConfig | None = None) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        unknown = [q for q in question_types if q not in QUESTION_TYPES]
        if unknown or not question_types:
            raise ValueError(f"question_types must be a non-empty subset of {list(QUESTION_TYPES)}, got {list(question_types)}")
        self.n, self.seed = n, seed
        self.question_types = tuple(question_types)
        self.config = config or WorldConfig()

    def __len__(self) -> int:
        return self.n

    def question_type(self, index: int) -> str:
        return self.question_types[index % len(self.question_types)]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} questions")
        kind = self.question_type(index)
        rng = np.random.default_rng([_STREAM_VQA, self.seed, index])
        template = QUESTION_TEMPLATES[kind][int(rng.integers(len(QUESTION_TEMPLATES[kind])))]
        if kind == "count":
            image, facts = _count_scene(rng, self.config)
            answer = facts["count"]
        elif kind == "word":
            word = SHAPE_NAMES[int(rng.integers(len(SHAPE_NAMES)))]
            others = [s for s in SHAPE_NAMES if s != word]
            image, facts = _one_object_scene(rng, self.config, word=word, shape=others[int(rng.integers(len(others)))])
            answer = word
        else:
            image, facts = _one_object_scene(rng, self.config)
            answer = facts[kind]
        return {"index": index, "pixels": _pixels(image), "prompt": template, "answer": answer, "question_type": kind}


class MiniCaptions(Dataset):
    """``n`` captioned one-object scenes (``word_prob`` of them carry another class's name).

    Items: ``{"index", "pixels" (uint8 [3, H, W]), "prompt", "caption"}``; the caption is the canonical one (the
    pretraining target) and :meth:`references` adds two paraphrases for CIDEr.
    """

    def __init__(self, n: int, seed: int = 0, word_prob: float = 0.3, config: WorldConfig | None = None) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if not 0 <= word_prob <= 1:
            raise ValueError(f"word_prob must be in [0, 1], got {word_prob}")
        self.n, self.seed, self.word_prob = n, seed, word_prob
        self.config = config or WorldConfig()

    def __len__(self) -> int:
        return self.n

    def _scene(self, index: int) -> tuple[np.ndarray, dict]:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} captions")
        rng = np.random.default_rng([_STREAM_CAPTIONS, self.seed, index])
        shape = SHAPE_NAMES[int(rng.integers(len(SHAPE_NAMES)))]
        word = None
        if rng.random() < self.word_prob:
            others = [s for s in SHAPE_NAMES if s != shape]
            word = others[int(rng.integers(len(others)))]
        return _one_object_scene(rng, self.config, word=word, shape=shape)

    def references(self, index: int) -> list[str]:
        """The canonical caption and two paraphrases of image ``index``."""
        return _captions(self._scene(index)[1])

    def __getitem__(self, index: int) -> dict:
        image, facts = self._scene(index)
        return {"index": index, "pixels": _pixels(image), "prompt": CAPTION_PROMPT, "caption": _captions(facts)[0]}


def _captions(facts: dict) -> list[str]:
    texts = [t.format(colour=facts["colour"], shape=facts["shape"], where=facts["where"]) for t in _CAPTION_TEMPLATES]
    if facts["word"] is not None:
        texts = [t + s.format(word=facts["word"]) for t, s in zip(texts, _WORD_SUFFIXES)]
    return texts


def wrong_answers(question_types: list[str], answers: list[str], seed: int = 0) -> list[str]:
    """Per question, a canonical answer of the same type other than the correct one (targeted-attack goals);
    deterministic in ``seed``."""
    rng = np.random.default_rng([23, seed])
    out = []
    for kind, answer in zip(question_types, answers, strict=True):
        others = [a for a in answer_choices(kind) if a != answer]
        out.append(others[int(rng.integers(len(others)))])
    return out
