"""Map-style ``torch.utils.data.Dataset``s that the training loop reads, one example per item.

Every item is a dict with ``"index"`` (its position, so frozen quantities can be looked up by it) and, for image
data, ``"pixels"`` (uint8 ``[3, H, W]``; converted to float on the training device), plus its own fields
(``label``, ``written``, ``caption``, ``chosen``, ``rejected``). Nothing here holds a whole image folder in memory:
folders and preference files are decoded one image at a time, and the procedural worlds render each item from
(seed, index) on demand (or once up front with ``cache``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from vlalign.data.folder import (
    CLASSES_FILE, METADATA_FILE, DatasetError, _read_metadata, _written_words, load_image, read_classes,
)
from vlalign.data.mini_world import MiniWorld, WorldConfig
from vlalign.data.people import PeopleConfig, PeopleWorld


class TensorImageDataset(Dataset):
    """Images already in memory (uint8 ``[N, 3, H, W]``, or None for feature-only data) with per-item fields
    given as tensors or lists of length N."""

    def __init__(self, images: torch.Tensor | None, n: int | None = None, **fields: torch.Tensor | Sequence) -> None:
        if images is not None and (images.dtype != torch.uint8 or images.dim() != 4):
            raise ValueError(f"images must be uint8 [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        self.n = images.shape[0] if images is not None else n
        if self.n is None:
            raise ValueError("give images or n")
        for name, values in fields.items():
            if len(values) != self.n:
                raise ValueError(f"field {name!r} has {len(values)} entries for {self.n} items")
        self.images, self.fields = images, fields

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"index": index}
        if self.images is not None:
            item["pixels"] = self.images[index]
        item.update({name: values[index] for name, values in self.fields.items()})
        return item


class MiniWorldDataset(Dataset):
    """Items ``0 … n−1`` of a mini-world split, rendered on demand from (split, seed, index) — the same pixels as
    ``MiniWorld.sample(split, n, seed)`` — or all at once up front with ``cache`` (``workers`` processes).
    Fields: ``label``, ``written`` (−1 for none) and ``caption``."""

    def __init__(self, split: str, n: int, seed: int, classes: tuple[str, ...] | None = None,
                 word_classes: tuple[str, ...] | None = None, world: WorldConfig | None = None,
                 cache: bool = False, workers: int = 1) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.world = MiniWorld(world)
        self.split, self.n, self.seed, self.classes, self.word_classes = split, n, seed, classes, word_classes
        self.cached = self.world.sample(split, n, seed, classes, workers=workers, word_classes=word_classes) if cache else None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} items")
        if self.cached is not None:
            one, row = self.cached, index
        else:
            one, row = self.world.sample(self.split, 1, self.seed, self.classes, start=index,
                                         word_classes=self.word_classes), 0
        return {"index": index, "pixels": one.images[row], "label": int(one.labels[row]),
                "written": int(one.written[row]), "caption": one.captions[row]}


class PeopleWorldDataset(Dataset):
    """Items ``0 … n−1`` of a people-world split, rendered on demand (or all up front with ``cache``) — the same
    pixels as ``PeopleWorld.sample(split, n, seed)``. Fields: ``label`` (activity), ``attribute``, ``occluded``,
    ``caption``."""

    def __init__(self, split: str, n: int, seed: int, world: PeopleConfig | None = None, cache: bool = False,
                 workers: int = 1) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.world, self.split, self.n, self.seed = PeopleWorld(world), split, n, seed
        self.cached = self.world.sample(split, n, seed, workers=workers) if cache else None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} items")
        one, row = (self.cached, index) if self.cached is not None else (
            self.world.sample(self.split, 1, self.seed, start=index), 0)
        return {"index": index, "pixels": one.images.images[row], "label": int(one.images.labels[row]),
                "attribute": int(one.attributes[row]), "occluded": bool(one.occluded[row]),
                "caption": one.images.captions[row]}


class ImageFolderDataset(Dataset):
    """An image folder (``metadata.jsonl``, see :mod:`vlalign.data.folder`) decoded lazily, one image per item.

    ``on_error="fail"`` (default) raises a :class:`DatasetError` naming the file for an image that is missing or
    cannot be decoded; ``"skip"`` returns ``None`` for it, which :func:`collate_skipping` drops from the batch and
    counts (the loop reports the count). Labels and written words are checked against the class list up front.
    """

    def __init__(self, folder: str | Path, image_size: int, on_error: str = "fail") -> None:
        if on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
        self.folder, self.image_size, self.on_error = Path(folder), image_size, on_error
        records = _read_metadata(self.folder)
        self.classnames = read_classes(self.folder, records)
        index = {c: i for i, c in enumerate(self.classnames)}
        meta_path = self.folder / METADATA_FILE
        self.files, self.labels, self.written, self.captions, self.where = [], [], [], [], []
        for record in records:
            where = f"{meta_path} line {record['_line']}"
            if record["label"] not in index:
                raise DatasetError(f"{where}: label {record['label']!r} is not in the class list {list(self.classnames)}")
            words = _written_words(record, index, self.classnames, where)
            if len(words) > 1:
                raise DatasetError(f"{where}: written lists {len(words)} words; a training set takes one written "
                                   "class name per image (evaluation takes several)")
            self.files.append(record["file_name"])
            self.labels.append(index[record["label"]])
            self.written.append(words[0] if words else -1)
            self.captions.append(record["caption"])
            self.where.append(where)

    def content_sources(self) -> tuple[list[Path], list[Path]]:
        """The files this set is read from (``metadata.jsonl``, ``classes.json``) and its images."""
        return [self.folder / METADATA_FILE, self.folder / CLASSES_FILE], [self.folder / f for f in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        try:
            pixels = load_image(self.folder / self.files[index], self.image_size, self.where[index])
        except DatasetError:
            if self.on_error == "fail":
                raise
            return None
        return {"index": index, "pixels": torch.from_numpy(np.array(pixels)).permute(2, 0, 1),
                "label": self.labels[index], "written": self.written[index], "caption": self.captions[index]}


class IndexView(Dataset):
    """The indices of ``base``'s items and nothing else (``{"index": i}``): for a method that reads everything it
    needs from frozen features cached by index. ``base`` still identifies the data in the run's config."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": index}


class PreferenceView(Dataset):
    """Preference triplets over any labelled image dataset whose items carry a written class: chosen = the true
    class, rejected = the written one (a typographic image folder, say)."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        item = self.base[index]
        if item is None:
            return None
        if item["written"] < 0:
            raise DatasetError(f"item {index} has no written class name; preference triplets need a typographic set")
        return {**item, "chosen": item["label"], "rejected": item["written"]}


class PreferenceJsonlDataset(Dataset):
    """Triplets from a JSONL file of ``{"image": path, "chosen": text, "rejected": text}`` (paths relative to the
    file), decoded lazily; ``chosen``/``rejected`` index ``prompts`` (see
    :func:`vlalign.data.preference.read_preference_rows`)."""

    def __init__(self, path: str | Path, image_size: int, rows: list[tuple[str, int, int, str]],
                 prompts: tuple[str, ...], on_error: str = "fail") -> None:
        if on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
        self.path, self.image_size, self.rows, self.prompts, self.on_error = Path(path), image_size, rows, prompts, on_error

    def content_sources(self) -> tuple[list[Path], list[Path]]:
        """The triplet JSONL and the images its rows name."""
        return [self.path], [self.path.parent / row[0] for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        image, chosen, rejected, where = self.rows[index]
        try:
            pixels = load_image(self.path.parent / image, self.image_size, where)
        except DatasetError:
            if self.on_error == "fail":
                raise
            return None
        return {"index": index, "pixels": torch.from_numpy(np.array(pixels)).permute(2, 0, 1),
                "chosen": chosen, "rejected": rejected}


def collate_skipping(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """``default_collate`` over the items that are not ``None``, plus ``"skipped"``: how many were."""
    kept = [item for item in items if item is not None]
    if not kept:
        raise DatasetError(f"every image of a batch of {len(items)} failed to decode")
    batch = default_collate(kept)
    batch["skipped"] = len(items) - len(kept)
    return batch


def content_digest(record_files: Iterable[Path], image_files: Iterable[Path]) -> str:
    """A short sha256 over the bytes of the files a dataset's records are read from and the path and byte size of
    each of its images (a missing file counts as size -1): cheap next to training, and it changes when a
    ``metadata.jsonl``, a triplet JSONL or an annotation JSON is edited, or an image is replaced by another size."""
    digest = hashlib.sha256()
    for path in record_files:
        digest.update(f"{path}\0".encode())
        try:
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError:
            digest.update(b"\0missing")
    for path in image_files:
        try:
            size = path.stat().st_size
        except OSError:
            size = -1
        digest.update(f"{path}\0{size}\n".encode())
    return digest.hexdigest()[:16]


def dataset_fingerprint(dataset: Dataset) -> dict[str, Any]:
    """What identifies a dataset in a run's config: its class, size, where known its source and, for a dataset read
    from files (one with ``content_sources()``: its record files and image files), a :func:`content_digest` of
    them, so that a run does not resume onto edited data."""
    info: dict[str, Any] = {"class": type(dataset).__name__, "n": len(dataset)}
    for attr in ("split", "seed", "classes", "word_classes", "folder", "path"):
        if hasattr(dataset, attr):
            value = getattr(dataset, attr)
            info[attr] = str(value) if isinstance(value, Path) else value
    if hasattr(dataset, "content_sources"):
        info["content"] = content_digest(*dataset.content_sources())
    if hasattr(dataset, "base"):
        info["base"] = dataset_fingerprint(dataset.base)
    return json.loads(json.dumps(info, default=str))


def collate_for(dataset: Dataset) -> Callable | None:
    """The collate function a dataset needs (``collate_skipping`` for datasets that may skip items)."""
    base = getattr(dataset, "base", dataset)
    return collate_skipping if getattr(base, "on_error", "fail") == "skip" else None
