"""The Karpathy-split JSON that COCO and Flickr30k retrieval use, read lazily and written for the mini world.

Format (``dataset_coco.json`` / ``dataset_flickr30k.json`` of Karpathy & Fei-Fei 2015)::

    {"images": [{"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "split": "test",
                 "sentences": [{"raw": "A man riding a motorcycle ...", "tokens": [...]}, ...], ...}, ...]}

An image lives at ``image_root / filepath / filename`` (``filepath`` is optional: Flickr30k's file has none).
``split`` is ``train``, ``restval`` (COCO's extra training images), ``val`` or ``test``; asking for ``train``
yields train and restval, as the standard Karpathy training set does. Each image keeps its first
``captions_per_image`` sentences (COCO has a few images with six or seven).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from vlalign.data.folder import DatasetError, load_image
from vlalign.data.retrieval_set import RetrievalSet
from vlalign.io import atomic_write_bytes, atomic_write_json, read_json

KARPATHY_FILE = "dataset.json"
SPLITS = ("train", "restval", "val", "test")


def _entries(json_path: Path, split: str, captions_per_image: int) -> list[tuple[str, list[str]]]:
    """(relative image path, captions) of every image of ``split``, validated; errors name the entry."""
    if split not in ("train", "val", "test", "restval"):
        raise ValueError(f"unknown Karpathy split {split!r}; expected one of {list(SPLITS)}")
    if captions_per_image < 1:
        raise ValueError(f"captions_per_image must be >= 1, got {captions_per_image}")
    if not json_path.is_file():
        raise DatasetError(f"{json_path}: Karpathy-split JSON not found")
    data = read_json(json_path, DatasetError)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{json_path}: expected an object with an \"images\" list")
    wanted = {"train", "restval"} if split == "train" else {split}
    out = []
    for i, image in enumerate(data["images"]):
        where = f"{json_path}: images[{i}]"
        if not isinstance(image, dict):
            raise DatasetError(f"{where}: expected an object, got {type(image).__name__}")
        if not isinstance(image.get("filename"), str) or not image["filename"]:
            raise DatasetError(f"{where}: missing the string field \"filename\"")
        where = f"{where} ({image['filename']})"
        if image.get("split") not in SPLITS:
            raise DatasetError(f"{where}: \"split\" must be one of {list(SPLITS)}, got {image.get('split')!r}")
        if image["split"] not in wanted:
            continue
        filepath = image.get("filepath", "")
        if not isinstance(filepath, str):
            raise DatasetError(f"{where}: \"filepath\" must be a string, got {filepath!r}")
        sentences = image.get("sentences")
        if not isinstance(sentences, list):
            raise DatasetError(f"{where}: missing the \"sentences\" list")
        raws = []
        for k, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(raw, str) or not raw.strip():
                raise DatasetError(f"{where}: sentences[{k}] has no non-empty string \"raw\"")
            raws.append(raw.strip())
        if len(raws) < captions_per_image:
            raise DatasetError(f"{where}: has {len(raws)} sentences, fewer than captions_per_image={captions_per_image}")
        out.append((str(Path(filepath) / image["filename"]), raws[:captions_per_image]))
    if not out:
        raise DatasetError(f"{json_path}: no images in split {split!r}")
    return out


class KarpathyDataset(Dataset):
    """A Karpathy-split retrieval set read lazily: images are decoded when an item is requested.

    Items are ``{"index", "pixels" (uint8 [3, H, W]), "captions" (list of str)}``; batch them with
    :func:`vlalign.data.retrieval_set.collate_retrieval`. ``image_size`` resizes (shorter side, bicubic) and
    centre-crops every image to a square, so images of different sizes can share a batch. Missing image files
    are reported at construction, naming the JSON entry.
    """

    def __init__(self, json_path: str | Path, image_root: str | Path, split: str = "test",
                 image_size: int | None = None, captions_per_image: int = 5, limit: int | None = None) -> None:
        self.json_path = self.path = Path(json_path)  # ``path`` identifies the data in a run's config
        self.image_root = Path(image_root)
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if not self.image_root.is_dir():
            raise DatasetError(f"{self.image_root}: image root folder not found")
        entries = _entries(self.json_path, split, captions_per_image)[:limit]
        for i, (path, _) in enumerate(entries):
            if not (self.image_root / path).is_file():
                raise DatasetError(f"{self.json_path}: image {path} of split {split!r} (item {i}) "
                                   f"not found under {self.image_root}")
        self.split = split
        self.image_size = image_size
        self.paths = [path for path, _ in entries]
        self.captions = [captions for _, captions in entries]

    def content_sources(self) -> tuple[list[Path], list[Path]]:
        """The Karpathy JSON and the images of this split."""
        return [self.json_path], [self.image_root / path for path in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        where = f"{self.json_path} ({self.paths[index]})"
        array = load_image(self.image_root / self.paths[index], self.image_size, where)
        return {"index": int(index), "pixels": torch.from_numpy(array.copy()).permute(2, 0, 1),
                "captions": list(self.captions[index])}

    def materialize(self, n: int | None = None, progress: bool = False) -> RetrievalSet:
        """The first ``n`` images (all when None) decoded into memory, for evaluation. Needs ``image_size``
        unless all images share one size."""
        count = len(self) if n is None else min(n, len(self))
        items = [self[i] for i in tqdm(range(count), desc="decode", disable=not progress)]
        shapes = {tuple(item["pixels"].shape) for item in items}
        if len(shapes) > 1:
            raise DatasetError(f"{self.json_path}: images of split {self.split!r} differ in size; pass image_size")
        return RetrievalSet(torch.stack([item["pixels"] for item in items]), [item["captions"] for item in items])


def load_karpathy_split(json_path: str | Path, image_root: str | Path, split: str = "test",
                        image_size: int | None = None, n: int | None = None, captions_per_image: int = 5,
                        progress: bool = False) -> RetrievalSet:
    """A (small) Karpathy split decoded into memory: the first ``n`` images of ``split`` and their captions."""
    dataset = KarpathyDataset(json_path, image_root, split, image_size, captions_per_image, limit=n)
    return dataset.materialize(progress=progress)


def export_karpathy(parts: Mapping[str, RetrievalSet], folder: str | Path, progress: bool = False) -> Path:
    """Write retrieval sets as PNG files plus a Karpathy-split ``dataset.json`` (``parts`` maps a split name
    to its images); returns the path of the JSON. Its image root is ``folder``."""
    from vlalign.models.tokenizer import split_words

    folder = Path(folder)
    unknown = sorted(set(parts) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split name(s) {unknown}; expected some of {list(SPLITS)}")
    records, sentence_id = [], 0
    for split, data in parts.items():
        for i in tqdm(range(len(data)), desc=f"export {split}", disable=not progress):
            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(data.images[i].permute(1, 2, 0).numpy())).save(buffer, format="PNG")
            filepath, filename = f"images/{split}", f"{i:06d}.png"
            atomic_write_bytes(folder / filepath / filename, buffer.getvalue())
            image_id = len(records)
            sentences = []
            for raw in data.captions[i]:
                sentences.append({"raw": raw, "tokens": split_words(raw), "imgid": image_id, "sentid": sentence_id})
                sentence_id += 1
            records.append({"filepath": filepath, "filename": filename, "split": split, "imgid": image_id,
                            "sentids": [s["sentid"] for s in sentences], "sentences": sentences})
    path = folder / KARPATHY_FILE
    atomic_write_json(path, {"dataset": "vlalign-retrieval-world", "images": records})
    return path
