"""Image folders on disk: ``images/*.png`` plus ``metadata.jsonl`` (one JSON object per image).

Each metadata line has ``file_name`` (relative to the folder), ``label`` (a class name) and optionally
``written`` (the class name written on the image, a list of them when it carries several, or null) and
``caption``. ``classes.json`` fixes the class order; without it the sorted set of labels is used. This is the
format ``vlalign data export`` writes and every command that takes ``--data`` reads.

Pixels are read faithfully whatever the file's mode: 16-bit and 32-bit integer images are scaled from their
16-bit range (not clipped at 255, which turned them white), transparent images are composited on white,
CMYK and palette images converted, EXIF orientation applied. Images the resize to the model's input distorts
(an extreme aspect ratio cropped away, a tiny image blown up, a huge one) raise an :class:`ImageLoadWarning`
per folder and are counted in ``ImageSet.load_warnings``.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from vlalign.data.image_set import ImageSet
from vlalign.data.pixels import to_rgb
from vlalign.io import atomic_write_bytes, atomic_write_json, read_json, read_utf8

METADATA_FILE = "metadata.jsonl"
CLASSES_FILE = "classes.json"


#: Longer side over shorter side beyond which the centre crop keeps less than a third of the image.
MAX_ASPECT_RATIO = 3.0
#: Upscaling factor beyond which an image is mostly interpolation.
MAX_UPSCALE = 4.0
#: Pixels beyond which an image is slow to decode and mostly discarded by the resize (about 50 megapixels).
HUGE_PIXELS = 50_000_000

#: Kinds of distortion counted in ``ImageSet.load_warnings``.
LOAD_WARNING_KINDS = ("extreme_aspect_ratio", "upscaled", "huge")


def describe_load_warning(kind: str, size: int | None) -> str:
    """What a ``load_warnings`` kind means, for the warning text (reads the thresholds at call time)."""
    target = f"{size}x{size}" if size is not None else "the model's input"
    if kind == "extreme_aspect_ratio":
        return (f"an aspect ratio beyond {MAX_ASPECT_RATIO:g}:1, so the centre crop to {target} keeps less than "
                f"{1 / MAX_ASPECT_RATIO:.0%} of the image")
    if kind == "upscaled":
        return f"a shorter side more than {MAX_UPSCALE:g}x below {target}, so the resize is mostly interpolation"
    if kind == "huge":
        return (f"more than {HUGE_PIXELS / 1e6:g} megapixels, slow to decode and almost all discarded by the "
                f"resize to {target}")
    raise ValueError(f"unknown load warning {kind!r}; expected one of {LOAD_WARNING_KINDS}")


class DatasetError(ValueError):
    """An image folder or its metadata is missing, corrupt or inconsistent."""


class ImageLoadWarning(UserWarning):
    """Images were loaded, but resizing them to the model's input distorts them (see ``LOAD_WARNING_KINDS``)."""


def _export_names(images: ImageSet) -> list[str]:
    """The images' own file names (as PNG) when they came from a folder and stay unique and inside the output
    folder, so an attacked copy is easy to match with its original; numbered names otherwise."""
    numbered = [f"images/{i:06d}.png" for i in range(len(images))]
    if not images.files:
        return numbered
    names = [PurePosixPath(f.replace("\\", "/")).with_suffix(".png") for f in images.files]
    inside = all(n.parts and not n.is_absolute() and ".." not in n.parts for n in names)
    reserved = {METADATA_FILE, CLASSES_FILE}
    if not inside or len({str(n).lower() for n in names}) != len(names) or any(str(n) in reserved for n in names):
        return numbered
    return [str(n) for n in names]


#: What a dataset export writes into its folder, in any of its formats (image folder, Karpathy JSON, VQAv2,
#: COCO captions): an export into a folder that holds one of them would overwrite or mix with that dataset.
DATASET_ENTRIES = (METADATA_FILE, CLASSES_FILE, "dataset.json", "questions.json", "annotations.json", "captions.json",
                   "images")


def existing_dataset_entries(folder: str | Path) -> list[str]:
    """The :data:`DATASET_ENTRIES` present in ``folder`` (an ``images`` folder only when it is not empty)."""
    folder = Path(folder)
    found = []
    for name in DATASET_ENTRIES:
        path = folder / name
        if (path.is_dir() and any(path.iterdir())) or path.is_file():
            found.append(name + ("/" if path.is_dir() else ""))
    return found


def remove_dataset_entries(folder: str | Path) -> list[str]:
    """Remove the :data:`DATASET_ENTRIES` of ``folder`` (the files of an earlier export; nothing else in it);
    returns what was removed."""
    import shutil

    folder = Path(folder)
    removed = existing_dataset_entries(folder)
    for name in DATASET_ENTRIES:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    return removed


def export_image_set(images: ImageSet, folder: str | Path, progress: bool = False) -> Path:
    """Write ``images`` as PNG files with ``metadata.jsonl`` and ``classes.json``; returns the folder.

    Images loaded from a folder keep their file names (with a .png suffix); others are numbered.
    """
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    names = _export_names(images)
    for i in tqdm(range(len(images)), desc="export", disable=not progress):
        name = names[i]
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(images.images[i].permute(1, 2, 0).numpy()).save(buffer, format="PNG")
        atomic_write_bytes(folder / name, buffer.getvalue())
        words = [images.classnames[w] for w in images.written_words(i)]
        if images.written.dim() == 1:
            written: str | list[str] | None = words[0] if words else None
        else:
            written = words or None
        record = {"file_name": name, "label": images.classnames[int(images.labels[i])], "written": written}
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
    # "\n" only: str.splitlines would also split at U+2028 / U+0085, which JSON strings may hold raw.
    for number, line in enumerate(read_utf8(meta_path, DatasetError).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{meta_path} line {number}: not valid JSON ({exc})") from None
        if not isinstance(record, dict) or not isinstance(record.get("file_name"), str) or not isinstance(record.get("label"), str):
            raise DatasetError(f"{meta_path} line {number}: expected an object with string fields \"file_name\" and \"label\", got {line[:120]}")
        if not record["label"].strip():
            raise DatasetError(f"{meta_path} line {number}: \"label\" must be a non-empty class name, got "
                               f"{record['label']!r}")
        caption = record.get("caption")
        if caption is not None and not isinstance(caption, str):
            raise DatasetError(f"{meta_path} line {number}: \"caption\" must be a string (or null / absent for "
                               f"none), got {caption!r}")
        record["caption"] = caption or ""
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
    classes = read_json(path, DatasetError)
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise DatasetError(f"{path}: expected a JSON list of class names")
    if not classes:
        raise DatasetError(f"{path}: class list is empty")
    if any(not c.strip() for c in classes):
        raise DatasetError(f"{path}: class names must be non-empty, got {[c for c in classes if not c.strip()]}")
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    if dupes:
        raise DatasetError(f"{path}: class list has duplicates {dupes}")
    return tuple(classes)


def resize_issues(width: int, height: int, size: int | None) -> list[str]:
    """Kinds of ``LOAD_WARNING_KINDS`` that apply to a ``width`` x ``height`` image resized to ``size`` (None:
    kept as it is)."""
    issues = []
    if size is not None and (width, height) != (size, size):
        if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
            issues.append("extreme_aspect_ratio")
        if size > MAX_UPSCALE * min(width, height):
            issues.append("upscaled")
    if width * height > HUGE_PIXELS:
        issues.append("huge")
    return issues


def load_image(path: Path, size: int | None, where: str, issues: dict[str, list[str]] | None = None) -> np.ndarray:
    """An RGB image as uint8 HxWx3 (see :func:`to_rgb`), resized (shorter side, then centre crop) to ``size`` if
    given. Distortions the resize causes are appended to ``issues`` (kind -> files), or, when ``issues`` is None,
    warned about with a text that names the folder, not the file (so it shows once per folder and kind)."""
    if not path.is_file():
        raise DatasetError(f"{where}: image {path} not found")
    try:
        with Image.open(path) as handle:
            image = to_rgb(ImageOps.exif_transpose(handle))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{where}: cannot decode image {path} ({exc})") from None
    except ValueError as exc:
        raise DatasetError(f"{where}: cannot convert image {path} (mode {handle.mode}) to RGB ({exc})") from None
    for kind in resize_issues(image.width, image.height, size):
        if issues is None:
            # No file name in the text: Python then shows it once per folder and kind, not once per image.
            warnings.warn(ImageLoadWarning(f"{path.parent}: images with {describe_load_warning(kind, size)} are "
                                           "resized anyway"), stacklevel=2)
        else:
            issues.setdefault(kind, []).append(f"{path.name} ({image.width}x{image.height})")
    if size is not None and image.size != (size, size):
        scale = size / min(image.size)
        w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        image = image.resize((w, h), Image.BICUBIC)
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image)


def _written_words(record: dict, index: dict[str, int], classes: tuple[str, ...], where: str) -> list[int]:
    """Class indices of the record's ``written`` field: null, a class name, or a list of class names."""
    mark = record.get("written")
    if mark is None:
        return []
    marks = mark if isinstance(mark, list) else [mark]
    if not all(isinstance(m, str) for m in marks):
        raise DatasetError(f"{where}: written must be a class name, a list of class names or null, got {mark!r}")
    for m in marks:
        if m not in index:
            raise DatasetError(f"{where}: written {m!r} is not in the class list {list(classes)}")
    return list(dict.fromkeys(index[m] for m in marks))


def _report_issues(issues: dict[str, list[str]], n: int, folder: Path, size: int | None) -> dict[str, int]:
    for kind, files in issues.items():
        example = ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")
        warnings.warn(ImageLoadWarning(f"{folder}: {len(files)} of {n} images have {describe_load_warning(kind, size)} "
                                       f"(e.g. {example})"), stacklevel=3)
    return {kind: len(issues.get(kind, [])) for kind in LOAD_WARNING_KINDS}


def load_image_folder(folder: str | Path, image_size: int | None = None) -> ImageSet:
    """Load a folder written by :func:`export_image_set` (or by hand in the same format).

    Images of different sizes need ``image_size``; every error names the file and line at fault. A ``written``
    list gives ``ImageSet.written`` one column per word (padded with -1) when some image carries several.
    """
    folder = Path(folder)
    records = _read_metadata(folder)
    classes = read_classes(folder, records)
    index = {c: i for i, c in enumerate(classes)}
    meta_path = folder / METADATA_FILE
    arrays, labels, written, captions = [], [], [], []
    issues: dict[str, list[str]] = {}
    for record in records:
        where = f"{meta_path} line {record['_line']}"
        if record["label"] not in index:
            raise DatasetError(f"{where}: label {record['label']!r} is not in the class list {list(classes)}")
        words = _written_words(record, index, classes, where)
        array = load_image(folder / record["file_name"], image_size, where, issues)
        if arrays and array.shape != arrays[0].shape:
            raise DatasetError(f"{where}: image is {array.shape[1]}x{array.shape[0]} but earlier ones are "
                               f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; pass image_size to resize them")
        arrays.append(array)
        labels.append(index[record["label"]])
        written.append(words)
        captions.append(record["caption"])
    width = max(len(w) for w in written)
    if width <= 1:
        written_tensor = torch.tensor([w[0] if w else -1 for w in written])
    else:
        written_tensor = torch.tensor([w + [-1] * (width - len(w)) for w in written])
    return ImageSet(
        images=torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(),
        labels=torch.tensor(labels), classnames=classes, written=written_tensor,
        captions=captions if any(captions) else [], files=[r["file_name"] for r in records],
        load_warnings=_report_issues(issues, len(records), folder, image_size),
    )
