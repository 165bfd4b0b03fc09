"""The people world: simple human-like figures of two body styles doing one of eight activities.

A stand-in for VL-Bias (Zhang et al. 2022), the people-doing-activities data set of the contrastive-PO paper's
gender experiment (§4.2). Each 64x64 image shows one figure (head, torso, arms, legs) whose body style is a
binary visible attribute, named neutrally:

- style A: a narrow-shouldered, wide triangular (skirt-like) torso;
- style B: broad shoulders over a narrow, straight torso.

The figure does one of :data:`ACTIVITIES`, shown by a held object or a pose. Colours, sizes, positions,
mirroring, noisy backgrounds and distractor strokes are random; the body style is the only thing that differs
between A and B. In the activities of :data:`OCCLUDING_ACTIVITIES` the object (a large book, a large bag) is held
in front of the body with probability ``occlusion_prob`` (in every split), hiding the torso: the image is then the
same, pixel for pixel, whatever the style.

Captions follow the paper's prompts: ``"the A-person is <activity>"``, ``"the B-person is <activity>"`` and the
attribute-neutral ``"the person is <activity>"``.

Every image is a pure function of (stream, seed, index), as in :mod:`vlalign.data.mini_world`. Splits:

- ``pretrain``: captioned images with a spurious correlation: each activity has a *stereotyped* style
  (:data:`STEREOTYPE`) and the figure has it with probability ``bias``. The captions carry two annotator biases
  documented for real caption data (Zhao et al. 2017, Hendricks et al. 2018): *reporting bias* (a
  counter-stereotypical figure's style is named with probability ``counter_caption_prob``, a stereotypical one's
  with the lower ``attribute_caption_prob``; otherwise the caption is neutral), and *stereotype guessing* (when the
  torso is hidden, a caption that names a style names the activity's stereotyped one). A contrastive model learns
  both: neutral prompts retrieve stereotypical figures first, and hidden figures are judged by their activity.
- ``train`` and ``test``: unbiased. Image i does activity ``i mod K`` with style ``(i // K) mod 2``, so every
  activity has exactly as many A as B figures (for ``n`` a multiple of 2K). ``train`` (for building
  preference and regularization sets) and ``test`` (for evaluation) never share an image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from vlalign.data.image_set import ImageSet
from vlalign.data.mini_world import _background
from vlalign.data.people_figures import FIGURE_EXTENT, FigurePainter, draw_figure
from vlalign.data.preference import PreferenceSet, RegularizationSet
from vlalign.data.typographic import _contrasting_colour, _luminance
from vlalign.processes import spawn_pool, split_range

ACTIVITIES: tuple[str, ...] = (
    "holding an umbrella", "kicking a ball", "reading a book", "flying a kite",
    "playing a guitar", "carrying a bag", "walking a dog", "riding a bike",
)
ATTRIBUTES: tuple[str, ...] = ("A", "B")
#: The style each activity co-occurs with in pretraining (index into ATTRIBUTES).
STEREOTYPE: tuple[int, ...] = (0, 1, 0, 1, 0, 1, 0, 1)
#: Activities whose object may be held in front of the body, hiding the torso (one per stereotype).
OCCLUDING_ACTIVITIES: tuple[str, ...] = ("reading a book", "carrying a bag")

ATTRIBUTE_TEMPLATE = "the {attribute}-person is {activity}"
NEUTRAL_TEMPLATE = "the person is {activity}"

SPLITS: tuple[str, ...] = ("pretrain", "train", "test")
_STREAMS = {"pretrain": 21, "train": 22, "test": 23}
_SUPERSAMPLE = 2  # figures are drawn at twice the resolution and downsampled, so thin limbs stay visible


def attribute_caption(attribute: int, activity: int) -> str:
    """``"the A-person is <activity>"`` for attribute index 0, ``"the B-person is …"`` for 1."""
    return ATTRIBUTE_TEMPLATE.format(attribute=ATTRIBUTES[attribute], activity=ACTIVITIES[activity])


def neutral_caption(activity: int) -> str:
    """``"the person is <activity>"``."""
    return NEUTRAL_TEMPLATE.format(activity=ACTIVITIES[activity])


def attribute_prompts() -> tuple[str, ...]:
    """The 2K attribute prompts in ``[attribute, activity]`` row-major order: prompt ``a * K + k``."""
    return tuple(attribute_caption(a, k) for a in range(len(ATTRIBUTES)) for k in range(len(ACTIVITIES)))


def neutral_prompts() -> tuple[str, ...]:
    """The K attribute-neutral prompts ``"the person is <activity>"``, in activity order."""
    return tuple(neutral_caption(k) for k in range(len(ACTIVITIES)))


def people_vocabulary() -> list[str]:
    """Every word the people world's captions and prompts contain (sorted)."""
    from vlalign.models.tokenizer import split_words

    texts = attribute_prompts() + neutral_prompts()
    return sorted({w for t in texts for w in split_words(t)})


@dataclass(frozen=True)
class PeopleConfig:
    """Knobs of the people world. Heights are in pixels of a square ``image_size`` image."""

    image_size: int = 64
    bias: float = 0.8
    attribute_caption_prob: float = 0.5
    counter_caption_prob: float = 0.9
    occlusion_prob: float = 0.6
    min_height: float = 28.0
    max_height: float = 40.0
    noise_std: float = 14.0
    max_distractors: int = 2

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")
        for name in ("bias", "attribute_caption_prob", "counter_caption_prob", "occlusion_prob"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        # The scene spans about 1.3 figure heights in each direction (a kite or umbrella above the head).
        if not 8 <= self.min_height <= self.max_height <= self.image_size / 1.3:
            raise ValueError(f"need 8 <= min_height <= max_height <= image_size/1.3 = {self.image_size / 1.3:.1f}, "
                             f"got {self.min_height}, {self.max_height}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        if self.max_distractors < 0:
            raise ValueError(f"max_distractors must be >= 0, got {self.max_distractors}")


@dataclass
class PeopleSet:
    """People-world images (``images.labels`` = activity index) with each figure's style in ``attributes`` and
    whether its torso is hidden in ``occluded`` (bool; all False when not given)."""

    images: ImageSet
    attributes: torch.Tensor
    occluded: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.attributes.shape != (n,):
            raise ValueError(f"attributes must have shape ({n},), got {tuple(self.attributes.shape)}")
        if self.occluded is None:
            self.occluded = torch.zeros(n, dtype=torch.bool)
        if self.occluded.shape != (n,) or self.occluded.dtype != torch.bool:
            raise ValueError(f"occluded must be a bool tensor of shape ({n},)")
        if n and (int(self.attributes.min()) < 0 or int(self.attributes.max()) >= len(ATTRIBUTES)):
            raise ValueError(f"attributes must lie in [0, {len(ATTRIBUTES) - 1}]")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def activities(self) -> torch.Tensor:
        """Activity index of every image (the ImageSet's labels)."""
        return self.images.labels

    def subset(self, index: torch.Tensor) -> "PeopleSet":
        """The images at ``index`` (a LongTensor or bool mask)."""
        return PeopleSet(self.images.subset(index), self.attributes[index], self.occluded[index])


class PeopleWorld:
    """Seed-deterministic generator of people-world image sets."""

    classnames: tuple[str, ...] = ACTIVITIES
    attributes: tuple[str, ...] = ATTRIBUTES

    def __init__(self, config: PeopleConfig | None = None) -> None:
        self.config = config or PeopleConfig()

    def render(self, stream: int, seed: int, index: int, activity: int, attribute: int, occluded: bool = False) -> np.ndarray:
        """Render one image of ``attribute`` doing ``activity`` (torso hidden if ``occluded``); uint8 ``H x W x 3``."""
        if not 0 <= activity < len(ACTIVITIES):
            raise ValueError(f"activity must be in [0, {len(ACTIVITIES) - 1}], got {activity}")
        if attribute not in (0, 1):
            raise ValueError(f"attribute must be 0 (A) or 1 (B), got {attribute}")
        if occluded and ACTIVITIES[activity] not in OCCLUDING_ACTIVITIES:
            raise ValueError(f"only {OCCLUDING_ACTIVITIES} can hide the body, got {ACTIVITIES[activity]!r}")
        cfg = self.config
        size = cfg.image_size
        rng = np.random.default_rng([stream, seed, index])
        img = _background(rng, size, cfg.noise_std)
        backdrop = _luminance(tuple(img.reshape(-1, 3).mean(0)))
        colours = {
            "body": _contrasting_colour(rng, backdrop, 60.0),
            "skin": _contrasting_colour(rng, backdrop, 50.0),
            "limb": _contrasting_colour(rng, backdrop, 70.0),
            "object": _contrasting_colour(rng, backdrop, 60.0),
            "object2": _contrasting_colour(rng, backdrop, 50.0),
        }
        height = rng.uniform(cfg.min_height, cfg.max_height)
        mirror = bool(rng.random() < 0.5)
        left, right, bottom, top = FIGURE_EXTENT
        if mirror:
            left, right = -right, -left
        x0 = rng.uniform(1 - left * height, size - 1 - right * height)
        y0 = rng.uniform(1 + top * height, size - 1 - bottom * height)
        s = _SUPERSAMPLE
        layer = Image.new("RGBA", (size * s, size * s), (0, 0, 0, 0))
        draw_figure(FigurePainter(layer, x0 * s, y0 * s, height * s, mirror), attribute, ACTIVITIES[activity],
                     {k: (*v, 255) for k, v in colours.items()}, occluded)
        layer = layer.resize((size, size), Image.Resampling.BOX)
        base = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).convert("RGBA")
        pil = Image.alpha_composite(base, layer).convert("RGB")
        draw = ImageDraw.Draw(pil)
        for _ in range(int(rng.integers(0, cfg.max_distractors + 1))):
            # Short strokes in the background, thinner than limbs, so they do not read as body parts.
            cx, cy = rng.uniform(0, size, size=2)
            angle, length = rng.uniform(0, math.pi), rng.uniform(4, 12)
            dx, dy = 0.5 * length * math.cos(angle), 0.5 * length * math.sin(angle)
            draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=tuple(int(c) for c in rng.integers(0, 256, size=3)), width=1)
        return np.asarray(pil)

    def sample(self, split: str, n: int, seed: int = 0, start: int = 0, workers: int = 1,
               swap_attribute: bool = False) -> PeopleSet:
        """Generate images ``start .. start+n-1`` of ``split`` (see module docstring) from ``seed``.

        ``workers`` > 1 renders chunks in parallel processes; the result is identical. ``swap_attribute`` renders
        each figure's counterfactual twin: the same scene (pose, colours, position, background, occlusion) with the
        other body style, and ``attributes`` flipped accordingly.
        """
        if split not in _STREAMS:
            raise ValueError(f"unknown people split {split!r}; expected one of {list(SPLITS)}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        if workers > 1 and n >= 2000:
            return self._sample_parallel(split, n, seed, start, workers, swap_attribute)
        cfg = self.config
        stream = _STREAMS[split]
        k = len(ACTIVITIES)
        images = np.empty((n, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
        activities = np.empty(n, dtype=np.int64)
        attributes = np.empty(n, dtype=np.int64)
        occluded = np.zeros(n, dtype=bool)
        captions: list[str] = []
        for row, i in enumerate(range(start, start + n)):
            activity = i % k
            stereotyped = STEREOTYPE[activity]
            choice = np.random.default_rng([stream, seed, i, 5])
            if split == "pretrain":
                attribute = stereotyped if choice.random() < cfg.bias else 1 - stereotyped
            else:
                attribute = (i // k) % 2
            if swap_attribute:  # the draws below do not depend on the attribute, so the twin shares them
                attribute = 1 - attribute
            hidden = ACTIVITIES[activity] in OCCLUDING_ACTIVITIES and choice.random() < cfg.occlusion_prob
            caption = neutral_caption(activity)
            if split == "pretrain":
                # What an annotator sees: a hidden figure is assumed to have the activity's stereotyped style.
                seen = stereotyped if hidden else attribute
                if choice.random() < (cfg.attribute_caption_prob if seen == stereotyped else cfg.counter_caption_prob):
                    caption = attribute_caption(seen, activity)
            images[row] = self.render(stream, seed, i, activity, attribute, hidden)
            activities[row] = activity
            attributes[row] = attribute
            occluded[row] = hidden
            captions.append(caption)
        return PeopleSet(
            images=ImageSet(images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                            labels=torch.from_numpy(activities), classnames=ACTIVITIES, captions=captions),
            attributes=torch.from_numpy(attributes),
            occluded=torch.from_numpy(occluded),
        )

    def _sample_parallel(self, split: str, n: int, seed: int, start: int, workers: int, swap_attribute: bool) -> PeopleSet:
        starts, sizes = zip(*split_range(start, n, workers))
        with spawn_pool(workers) as pool:
            parts = list(pool.map(self.sample, [split] * len(starts), sizes, [seed] * len(starts), starts,
                                  [1] * len(starts), [swap_attribute] * len(starts)))
        return PeopleSet(
            images=ImageSet(images=torch.cat([p.images.images for p in parts]),
                            labels=torch.cat([p.images.labels for p in parts]), classnames=ACTIVITIES,
                            captions=[c for p in parts for c in p.images.captions]),
            attributes=torch.cat([p.attributes for p in parts]),
            occluded=torch.cat([p.occluded for p in parts]),
        )


def flip_preference_data(people: PeopleSet, n_pref: int,
                         regularize_on: str = "rest") -> tuple[PreferenceSet, RegularizationSet]:
    """Preference and regularization sets that flip the attribute (contrastive-PO §4.2).

    The first ``n_pref`` images become triplets (x, preferred = the correct activity with the *flipped* attribute,
    dispreferred = the correct activity with the original attribute) over :func:`attribute_prompts`; the
    regularization set over the neutral prompts, which keeps activity recognition, is the rest of the images
    (``regularize_on="rest"``) or the preference images themselves (``"same"``, the paper's choice: "as the
    regulatory term, we use the same dataset of images").
    """
    if regularize_on not in ("rest", "same"):
        raise ValueError(f"regularize_on must be 'rest' or 'same', got {regularize_on!r}")
    low = 1 if regularize_on == "same" else 0
    if not 1 <= n_pref < len(people) + low:
        what = "" if low else " so that images remain for regularization"
        raise ValueError(f"n_pref must be in [1, {len(people) - 1 + low}]{what}, got {n_pref}")
    k = len(ACTIVITIES)
    act, attr = people.activities[:n_pref], people.attributes[:n_pref]
    pref = PreferenceSet(people.images.images[:n_pref], chosen=(1 - attr) * k + act, rejected=attr * k + act,
                         prompts=attribute_prompts())
    rows = slice(0, n_pref) if regularize_on == "same" else slice(n_pref, None)
    reg = RegularizationSet(people.images.images[rows], neutral_prompts(), people.activities[rows].clone())
    return pref, reg
