"""Image folders on disk: ``images/*.png`` plus ``metadata.jsonl`` (one JSON object per image).

Each metadata line has ``file_name`` (relative to the folder), ``label`` (a class name) and optionally
``written`` (the class name written on the image, or null) and ``caption``. ``classes.json`` fixes the class
order; without it the sorted set of labels is used. This is the format ``vlalign data export`` writes and
every command that takes ``--data`` reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from vlalign.data.image_set import ImageSet
from vlalign.io import atomic_write_bytes, atomic_write_json

METADATA_FILE = "metadata.jsonl"
CLASSES_FILE = "classes.json"


class DatasetError(ValueError):
    """An image folder or its metadata is missing, corrupt or inconsistent."""


def export_image_set(images: ImageSet, folder: str | Path, progress: bool = False) -> Path:
    """Write ``images`` as PNG files with ``metadata.jsonl`` and ``classes.json``; returns the folder."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in tqdm(range(len(images)), desc="export", disable=not progress):
        name = f"images/{i:06d}.png"
        Image.fromarray(images.images[i].permute(1, 2, 0).numpy()).save(folder / name)
        written = int(images.written[i])
        record = {"file_name": name, "label": images.classnames[int(images.labels[i])],
                  "written": images.classnames[written] if written >= 0 else None}
        if images.captions:
            record["caption"] = images.captions[i]
        lines.append(json.dumps(record))
    atomic_write_bytes(folder / METADATA_FILE, ("\n".join(lines) + "\n").encode())
    atomic_write_json(folder / CLASSES_FILE, list(images.classnames))
    return folder


def _read_metadata(folder: Path) -> list[dict]:
    meta_path = folder / METADATA_FILE
    if not folder.is_dir():
        raise DatasetError(f"{folder}: image folder not found")
    if not meta_path.is_file():
        raise DatasetError(f"{meta_path}: missing; an image folder needs {METADATA_FILE} with one JSON object per image")
    records = []
    for number, line in enumerate(meta_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{meta_path} line {number}: not valid JSON ({exc})") from None
        if not isinstance(record, dict) or not isinstance(record.get("file_name"), str) or not isinstance(record.get("label"), str):
            raise DatasetError(f"{meta_path} line {number}: expected an object with string fields \"file_name\" and \"label\", got {line[:120]}")
        record["_line"] = number
        records.append(record)
    if not records:
        raise DatasetError(f"{meta_path}: lists no images")
    return records


def read_classes(folder: Path, records: list[dict]) -> tuple[str, ...]:
    """Class order from ``classes.json``, or the sorted labels when it is absent."""
    path = folder / CLASSES_FILE
    if not path.is_file():
        return tuple(sorted({r["label"] for r in records}))
    try:
        classes = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise DatasetError(f"{path}: expected a JSON list of class names")
    if not classes:
        raise DatasetError(f"{path}: class list is empty")
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    if dupes:
        raise DatasetError(f"{path}: class list has duplicates {dupes}")
    return tuple(classes)


def load_image(path: Path, size: int | None, where: str) -> np.ndarray:
    """An RGB image as uint8 HxWx3, resized (shorter side, then centre crop) to ``size`` if given."""
    if not path.is_file():
        raise DatasetError(f"{where}: image {path} not found")
    try:
        with Image.open(path) as handle:
            image = handle.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{where}: cannot decode image {path} ({exc})") from None
    if size is not None and image.size != (size, size):
        scale = size / min(image.size)
        w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        image = image.resize((w, h), Image.BICUBIC)
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image)


def load_image_folder(folder: str | Path, image_size: int | None = None) -> ImageSet:
    """Load a folder written by :func:`export_image_set` (or by hand in the same format).

    Images of different sizes need ``image_size``; every error names the file and line at fault.
    """
    folder = Path(folder)
    records = _read_metadata(folder)
    classes = read_classes(folder, records)
    index = {c: i for i, c in enumerate(classes)}
    meta_path = folder / METADATA_FILE
    arrays, labels, written, captions = [], [], [], []
    for record in records:
        where = f"{meta_path} line {record['_line']}"
        if record["label"] not in index:
            raise DatasetError(f"{where}: label {record['label']!r} is not in the class list {list(classes)}")
        mark = record.get("written")
        if mark is not None and mark not in index:
            raise DatasetError(f"{where}: written {mark!r} is not in the class list {list(classes)}")
        array = load_image(folder / record["file_name"], image_size, where)
        if arrays and array.shape != arrays[0].shape:
            raise DatasetError(f"{where}: image is {array.shape[1]}x{array.shape[0]} but earlier ones are "
                               f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; pass image_size to resize them")
        arrays.append(array)
        labels.append(index[record["label"]])
        written.append(index[mark] if mark is not None else -1)
        captions.append(str(record.get("caption", "")))
    return ImageSet(
        images=torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(),
        labels=torch.tensor(labels), classnames=classes, written=torch.tensor(written),
        captions=captions if any(captions) else [],
    )
