"""Preference data (x, y_w, y_l) and regularization data for contrastive preference optimization (§3.2).

Texts are referred to by index into a fixed prompt list, because the policy is a softmax over that list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vlalign.data.folder import DatasetError, load_image
from vlalign.data.image_set import ImageSet
from vlalign.data.mini_world import INDOMAIN_CLASSES, MiniWorld
from vlalign.io import read_utf8

DEFAULT_TEMPLATE = "a photo of a {}"


@dataclass
class PreferenceSet:
    """Triplets: image ``images[i]`` (uint8), preferred text ``prompts[chosen[i]]``, dispreferred ``prompts[rejected[i]]``."""

    images: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    prompts: tuple[str, ...]

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, 3, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if n == 0:
            raise ValueError("preference set is empty")
        if self.chosen.shape != (n,) or self.rejected.shape != (n,):
            raise ValueError(f"chosen and rejected must have shape ({n},)")
        if not self.prompts or len(set(self.prompts)) != len(self.prompts):
            raise ValueError("prompts must be a non-empty list without duplicates")
        k = len(self.prompts)
        for name, index in (("chosen", self.chosen), ("rejected", self.rejected)):
            if int(index.min()) < 0 or int(index.max()) >= k:
                raise ValueError(f"{name} indices must lie in [0, {k - 1}]")
        if bool((self.chosen == self.rejected).any()):
            raise ValueError("a triplet prefers and disprefers the same text")

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class RegularizationSet:
    """Clean images whose policy over ``prompts`` is kept close to the reference (eq. 11); labels optional."""

    images: torch.Tensor
    prompts: tuple[str, ...]
    labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, 3, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels is not None and self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must have one entry per image")

    def __len__(self) -> int:
        return self.images.shape[0]


def class_prompts(classnames: tuple[str, ...] | list[str], template: str = DEFAULT_TEMPLATE) -> tuple[str, ...]:
    """``template`` filled with each class name."""
    if "{}" not in template:
        raise ValueError(f"template must contain '{{}}', got {template!r}")
    return tuple(template.format(c) for c in classnames)


def preference_from_typographic(images: ImageSet, template: str = DEFAULT_TEMPLATE) -> PreferenceSet:
    """Typographic images -> triplets (x̃, true class, written class); an image carrying several written class
    names gives one triplet per name."""
    words = images.written.reshape(len(images), -1)
    has_word = (words >= 0).any(1)
    if not bool(has_word.all()):
        raise ValueError("every image needs a written class name (a typographic set) to build preference triplets")
    rows, columns = (words >= 0).nonzero(as_tuple=True)
    return PreferenceSet(images.images[rows], images.labels[rows].clone(), words[rows, columns].clone(),
                         class_prompts(images.classnames, template))


def typographic_preference_data(n_pref: int, n_reg: int, seed: int, classes: tuple[str, ...] = INDOMAIN_CLASSES,
                                world: MiniWorld | None = None, template: str = DEFAULT_TEMPLATE,
                                ) -> tuple[PreferenceSet, RegularizationSet]:
    """D_pref from typographic mini-world images of ``classes`` (words also drawn from ``classes``, so held-out
    class names are never seen) and D_reg from clean images of the same classes (other scenes)."""
    world = world or MiniWorld()
    typo = world.sample("typographic", n_pref, seed, classes=classes, word_classes=classes)
    clean = world.sample("clean", n_reg, seed + 1, classes=classes)
    prompts = class_prompts(world.classnames, template)
    return preference_from_typographic(typo, template), RegularizationSet(clean.images, prompts, clean.labels)


def is_full_prompt(text: str, template: str = DEFAULT_TEMPLATE) -> bool:
    """Whether a ``chosen``/``rejected`` value is already a whole prompt rather than a class name.

    The rule: a value with more than one word, or containing the template's own text (``"a photo of a"`` for
    ``"a photo of a {}"``, compared word by word, case-insensitively), is a full prompt and used as it is; a
    single word is a class name and filled into the template. So ``star`` -> ``a photo of a star``, while
    ``a photo of a star`` and ``a drawing of a star`` stay unchanged (never ``a photo of a a photo of a star``).
    Write a multi-word class name in full (``a photo of a traffic light``) to keep the template.
    """
    words = text.lower().split()
    if len(words) > 1:
        return True
    fixed = [part.lower().split() for part in template.split("{}")]
    # A single word contains a part of the template word by word only if it is that (one-word) part: compared as
    # strings, "star" would contain the "a" of "a {}".
    return any(part and part == words for part in fixed)


def read_preference_rows(path: str | Path, template: str = DEFAULT_TEMPLATE, classnames: list[str] | None = None
                         ) -> tuple[list[tuple[str, int, int, str]], tuple[str, ...]]:
    """Parse a JSONL file of ``{"image": path, "chosen": text, "rejected": text}`` (paths relative to the file)
    without reading the images: ``([(image, chosen index, rejected index, "file line N"), ...], prompts)``.

    A ``chosen``/``rejected`` value is a class name filled into ``template`` or, by the rule of
    :func:`is_full_prompt`, a full prompt used as it is; a class name and its templated prompt share one prompt.
    The prompt list comes from ``classnames`` (default: every value that occurs, sorted)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: preference file not found")
    rows = []
    # "\n" only: str.splitlines would also split at U+2028 / U+0085, which JSON strings may hold raw.
    for number, line in enumerate(read_utf8(path, DatasetError).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path} line {number}: not valid JSON ({exc})") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("image", "chosen", "rejected")):
            raise DatasetError(f"{path} line {number}: expected string fields \"image\", \"chosen\", \"rejected\"")
        for key in ("chosen", "rejected"):
            if not row[key].strip():
                raise DatasetError(f"{path} line {number}: \"{key}\" must be a non-empty class name or prompt, got "
                                   f"{row[key]!r}")
        rows.append((number, row))
    if not rows:
        raise DatasetError(f"{path}: no preference triplets")
    if "{}" not in template:
        raise ValueError(f"template must contain '{{}}', got {template!r}")
    names = list(classnames) if classnames else sorted({r[k] for _, r in rows for k in ("chosen", "rejected")})
    if len(set(names)) != len(names):
        raise DatasetError(f"{path}: class list has duplicates")
    # "star" and "a photo of a star" are one text: they share one prompt (and one index of the policy).
    texts = {n: n if is_full_prompt(n, template) else template.format(n) for n in names}
    prompts = tuple(dict.fromkeys(texts.values()))
    index = {n: prompts.index(text) for n, text in texts.items()}
    parsed = []
    for number, row in rows:
        where = f"{path} line {number}"
        for key in ("chosen", "rejected"):
            if row[key] not in index:
                raise DatasetError(f"{where}: {key} {row[key]!r} is not in the class list {names}")
        if index[row["chosen"]] == index[row["rejected"]]:
            raise DatasetError(f"{where}: chosen {row['chosen']!r} and rejected {row['rejected']!r} are the same "
                               f"prompt {texts[row['chosen']]!r}")
        parsed.append((row["image"], index[row["chosen"]], index[row["rejected"]], where))
    return parsed, prompts


def load_preference_jsonl(path: str | Path, image_size: int, template: str = DEFAULT_TEMPLATE,
                          classnames: list[str] | None = None) -> PreferenceSet:
    """Triplets from a preference JSONL (see :func:`read_preference_rows`), with every image loaded into memory."""
    path = Path(path)
    rows, prompts = read_preference_rows(path, template, classnames)
    images = [load_image(path.parent / image, image_size, where) for image, _, _, where in rows]
    return PreferenceSet(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
                         torch.tensor([r[1] for r in rows]), torch.tensor([r[2] for r in rows]), prompts)
