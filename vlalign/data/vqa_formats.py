"""Real data formats for generative VLMs: VQAv2 questions + annotations JSON over an image root, and COCO-captions
JSON; loaders with one-line errors naming the file and field, and writers of the mini world in these formats.

VQAv2 (Antol et al. 2015; Goyal et al. 2017): ``questions.json`` = ``{"data_subtype": "val2014", "questions":
[{"image_id", "question", "question_id"}, ...]}`` and ``annotations.json`` = ``{"annotations": [{"question_id",
"image_id", "question_type", "answer_type", "multiple_choice_answer", "answers": [{"answer", "answer_confidence",
"answer_id"}, ... ten]}, ...]}``; image ``i`` is ``<image_root>/COCO_<data_subtype>_<i:012d>.jpg`` (or ``.png``).
COCO captions (Chen et al. 2015): ``{"images": [{"id", "file_name", ...}], "annotations": [{"id", "image_id",
"caption"}]}``, files relative to the image root.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from vlalign.data.folder import DatasetError, load_image
from vlalign.data.vqa import CAPTION_PROMPT, MiniCaptions, MiniVQA
from vlalign.io import atomic_write_bytes, atomic_write_json, read_json

QUESTIONS_FILE = "questions.json"
ANNOTATIONS_FILE = "annotations.json"
CAPTIONS_FILE = "captions.json"
IMAGES_DIR = "images"
MINI_SUBTYPE = "mini"
_IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise DatasetError(f"{path}: {what} file not found")
    return read_json(path, DatasetError, expect=dict)


def _records(data: dict, key: str, fields: dict[str, type | tuple[type, ...]], path: Path,
             text: tuple[str, ...] = ()) -> list[dict]:
    """The non-empty list of objects under ``key``, each with ``fields`` of the given types; the ``text`` fields
    must not be empty or whitespace only (an empty reference would enter exact match and CIDEr-D)."""
    records = data.get(key)
    if not isinstance(records, list) or not records:
        raise DatasetError(f"{path}: expected a non-empty list under {key!r}")
    for number, record in enumerate(records):
        if not isinstance(record, dict):
            raise DatasetError(f"{path}: {key}[{number}] is not an object")
        for name, kind in fields.items():
            if not isinstance(record.get(name), kind) or isinstance(record.get(name), bool):
                raise DatasetError(f"{path}: {key}[{number}] needs field {name!r} of type "
                                   f"{getattr(kind, '__name__', kind)}, got {record.get(name)!r}")
        for name in text:
            if not record[name].strip():
                raise DatasetError(f"{path}: {key}[{number}] field {name!r} is empty ({record[name]!r}); "
                                   "expected text")
    return records


def _index_by(records: list[dict], field: str, key: str, path: Path) -> dict[int, int]:
    """``record[field] -> its position`` over ``records`` (the list under ``key`` in ``path``); a repeated value is
    a :class:`DatasetError` naming both entries (a dict would silently keep the last one)."""
    seen: dict[int, int] = {}
    for number, record in enumerate(records):
        first = seen.setdefault(record[field], number)
        if first != number:
            raise DatasetError(f"{path}: {key}[{number}] repeats {field} {record[field]} of {key}[{first}]; "
                               f"expected each {field} once")
    return seen


def _subtype(data: dict, path: Path) -> str | None:
    """The ``data_subtype`` string of a VQAv2 file, or None when it has none."""
    if "data_subtype" not in data:
        return None
    if not isinstance(data["data_subtype"], str):
        raise DatasetError(f"{path}: \"data_subtype\" must be a string such as \"val2014\", "
                           f"got {data['data_subtype']!r}")
    return data["data_subtype"]


def _to_pixels(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class VQADataset(Dataset):
    """VQAv2-format questions over an image root; items ``{"index", "pixels", "prompt", "answer",
    "question_type"}`` (``answer``: the annotators' majority answer); :meth:`answers` gives all human answers.

    ``image_size`` resizes (shorter side, then centre crop) so images of any size batch together.
    """

    def __init__(self, questions: str | Path, annotations: str | Path, image_root: str | Path,
                 image_size: int | None = None) -> None:
        questions, annotations, self.image_root = Path(questions), Path(annotations), Path(image_root)
        self.sources = (questions, annotations)
        q_data = _read_json(questions, "VQAv2 questions")
        a_data = _read_json(annotations, "VQAv2 annotations")
        q_subtype, a_subtype = _subtype(q_data, questions), _subtype(a_data, annotations)
        self.subtype = q_subtype if q_subtype is not None else a_subtype or ""
        records = _records(q_data, "questions", {"image_id": int, "question": str, "question_id": int}, questions,
                           text=("question",))
        notes = _records(a_data, "annotations", {"question_id": int, "multiple_choice_answer": str, "answers": list},
                         annotations, text=("multiple_choice_answer",))
        _index_by(records, "question_id", "questions", questions)
        positions = _index_by(notes, "question_id", "annotations", annotations)
        by_id = {qid: notes[number] for qid, number in positions.items()}
        if not self.image_root.is_dir():
            raise DatasetError(f"{self.image_root}: image root not found")
        self.image_size = image_size
        self.items: list[tuple[dict, dict, Path]] = []
        for number, record in enumerate(records):
            note = by_id.get(record["question_id"])
            if note is None:
                raise DatasetError(f"{annotations}: no annotation for question_id {record['question_id']} "
                                   f"({questions} questions[{number}])")
            if "image_id" in note and note["image_id"] != record["image_id"]:
                raise DatasetError(f"{annotations}: the annotation of question_id {record['question_id']} has image_id "
                                   f"{note['image_id']!r}, but {questions} questions[{number}] has image_id "
                                   f"{record['image_id']}; expected the same image")
            answers = note["answers"]
            if not answers or not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers):
                raise DatasetError(f"{annotations}: question_id {record['question_id']}: \"answers\" must be a non-empty "
                                   "list of objects with a string \"answer\"")
            self.items.append((record, note, self._image_path(record["image_id"], questions, number)))

    def _image_path(self, image_id: int, source: Path, number: int) -> Path:
        stem = f"COCO_{self.subtype}_{image_id:012d}" if self.subtype else f"{image_id:012d}"
        for suffix in _IMAGE_SUFFIXES:
            if (self.image_root / (stem + suffix)).is_file():
                return self.image_root / (stem + suffix)
        raise DatasetError(f"{source} questions[{number}]: image {self.image_root / stem}"
                           f"{{{','.join(_IMAGE_SUFFIXES)}}} not found")

    def content_sources(self) -> tuple[list[Path], list[Path]]:
        """The questions and annotations JSON files and the images they name."""
        return list(self.sources), [path for _, _, path in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def answers(self, index: int) -> list[str]:
        """The human answers of question ``index`` (ten in VQAv2)."""
        return [a["answer"] for a in self.items[index][1]["answers"]]

    def __getitem__(self, index: int) -> dict:
        record, note, path = self.items[index]
        image = load_image(path, self.image_size, f"question_id {record['question_id']}")
        return {"index": index, "pixels": _to_pixels(image), "prompt": record["question"],
                "answer": note["multiple_choice_answer"], "question_type": str(note.get("question_type", ""))}


class CocoCaptionsDataset(Dataset):
    """COCO-captions JSON over an image root; one item per image: ``{"index", "pixels", "prompt", "caption"}`` (the
    first reference); :meth:`references` gives all of them."""

    def __init__(self, annotations: str | Path, image_root: str | Path, image_size: int | None = None,
                 prompt: str = CAPTION_PROMPT) -> None:
        annotations, self.image_root = Path(annotations), Path(image_root)
        self.sources = (annotations,)
        data = _read_json(annotations, "COCO captions")
        images = _records(data, "images", {"id": int, "file_name": str}, annotations)
        notes = _records(data, "annotations", {"image_id": int, "caption": str}, annotations, text=("caption",))
        known = _index_by(images, "id", "images", annotations)
        if not self.image_root.is_dir():
            raise DatasetError(f"{self.image_root}: image root not found")
        captions: dict[int, list[str]] = {}
        for number, note in enumerate(notes):
            if note["image_id"] not in known:
                raise DatasetError(f"{annotations}: annotations[{number}] has image_id {note['image_id']}, which no "
                                   "entry of \"images\" has")
            captions.setdefault(note["image_id"], []).append(note["caption"])
        self.image_size, self.prompt = image_size, prompt
        self.items: list[tuple[int, Path, list[str]]] = []
        for number, image in enumerate(images):
            path = self.image_root / image["file_name"]
            if not path.is_file():
                raise DatasetError(f"{annotations}: images[{number}]: {path} not found")
            if image["id"] not in captions:
                raise DatasetError(f"{annotations}: images[{number}] (id {image['id']}) has no caption")
            self.items.append((image["id"], path, captions[image["id"]]))

    def content_sources(self) -> tuple[list[Path], list[Path]]:
        """The captions JSON and the images it names."""
        return list(self.sources), [path for _, path, _ in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def references(self, index: int) -> list[str]:
        return list(self.items[index][2])

    def __getitem__(self, index: int) -> dict:
        image_id, path, refs = self.items[index]
        image = load_image(path, self.image_size, f"image id {image_id}")
        return {"index": index, "pixels": _to_pixels(image), "prompt": self.prompt, "caption": refs[0]}


def load_vqa_folder(folder: str | Path, image_size: int | None = None) -> VQADataset:
    """A folder written by :func:`export_vqa`: ``questions.json``, ``annotations.json``, ``images/``."""
    folder = Path(folder)
    return VQADataset(folder / QUESTIONS_FILE, folder / ANNOTATIONS_FILE, folder / IMAGES_DIR, image_size)


def load_captions_folder(folder: str | Path, image_size: int | None = None) -> CocoCaptionsDataset:
    """A folder written by :func:`export_captions`: ``captions.json``, ``images/``."""
    folder = Path(folder)
    return CocoCaptionsDataset(folder / CAPTIONS_FILE, folder / IMAGES_DIR, image_size)


def _write_png(pixels: torch.Tensor, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


_HUMAN_VARIANTS = ("{}", "{}", "{}", "{}", "{}", "{}", "{}.", "{} ", "the {}", "{}!")
_NUMBER_WORDS = ("zero", "one", "two", "three", "four")


def _human_answers(answer: str, rng: np.random.Generator) -> list[str]:
    """Ten annotator answers that all normalize to ``answer`` (numbers sometimes spelled out, punctuation, case)."""
    out = []
    for variant in _HUMAN_VARIANTS:
        text = answer
        if text.isdigit() and int(text) < len(_NUMBER_WORDS) and rng.random() < 0.5:
            text = _NUMBER_WORDS[int(text)]
        if rng.random() < 0.3:
            text = text.capitalize()
        out.append(variant.format(text))
    return out


def export_vqa(dataset: MiniVQA, folder: str | Path, progress: bool = False) -> Path:
    """Write mini-world questions in VQAv2 format (one image per question); returns the folder."""
    folder = Path(folder)
    rng = np.random.default_rng([31, dataset.seed])
    questions, annotations = [], []
    for i in tqdm(range(len(dataset)), desc="export vqa", disable=not progress):
        item = dataset[i]
        _write_png(item["pixels"], folder / IMAGES_DIR / f"COCO_{MINI_SUBTYPE}_{i:012d}.png")
        question = item["prompt"]
        questions.append({"image_id": i, "question": question, "question_id": i})
        answers = [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                   for k, a in enumerate(_human_answers(item["answer"], rng))]
        annotations.append({"question_id": i, "image_id": i, "question_type": item["question_type"],
                            "answer_type": "number" if item["question_type"] == "count" else "other",
                            "multiple_choice_answer": item["answer"], "answers": answers})
    info = {"description": f"vlalign mini-world questions, seed {dataset.seed}"}
    atomic_write_json(folder / QUESTIONS_FILE, {"info": info, "task_type": "Open-Ended", "data_type": "mini",
                                                "data_subtype": MINI_SUBTYPE, "questions": questions})
    atomic_write_json(folder / ANNOTATIONS_FILE, {"info": info, "data_type": "mini", "data_subtype": MINI_SUBTYPE,
                                                  "annotations": annotations})
    return folder


def export_captions(dataset: MiniCaptions, folder: str | Path, progress: bool = False) -> Path:
    """Write mini-world captions (three references per image) in COCO-captions format; returns the folder."""
    folder = Path(folder)
    images, annotations = [], []
    for i in tqdm(range(len(dataset)), desc="export captions", disable=not progress):
        item = dataset[i]
        name = f"{i:012d}.png"
        _write_png(item["pixels"], folder / IMAGES_DIR / name)
        height, width = item["pixels"].shape[1:]
        images.append({"id": i, "file_name": name, "height": int(height), "width": int(width)})
        annotations += [{"id": len(annotations) + k, "image_id": i, "caption": c}
                        for k, c in enumerate(dataset.references(i))]
    atomic_write_json(folder / CAPTIONS_FILE, {
        "info": {"description": f"vlalign mini-world captions, seed {dataset.seed}"}, "licenses": [],
        "images": images, "annotations": annotations})
    return folder
