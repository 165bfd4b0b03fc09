"""Image folders on disk (``images/*.png`` + ``metadata.jsonl`` + ``classes.json``) and ImageSet validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlalign.data.folder import DatasetError, export_image_set, load_image_folder
from vlalign.data.image_set import ImageSet
from vlalign.data.mini_world import MiniWorld


@pytest.fixture(scope="module")
def typo_set():
    return MiniWorld().sample("typographic", 14, seed=3)


@pytest.fixture
def exported(tmp_path, typo_set) -> Path:
    return export_image_set(typo_set, tmp_path / "folder")


def write_folder(folder: Path, records: list, classes: list | None = None, sizes: dict | None = None) -> Path:
    """A hand-written folder: one PNG per record (``sizes`` maps file names to (w, h)), metadata and classes."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for record in records:
        if isinstance(record, str):
            lines.append(record)
            continue
        size = (sizes or {}).get(record["file_name"], (8, 8))
        Image.new("RGB", size, (10, 200, 30)).save(folder / record["file_name"])
        lines.append(json.dumps(record))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    if classes is not None:
        (folder / "classes.json").write_text(json.dumps(classes))
    return folder


def load_error(folder: Path, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        load_image_folder(folder, **kwargs)
    return str(info.value)


def test_export_load_round_trip(exported, typo_set):
    assert sorted(p.name for p in exported.iterdir()) == ["classes.json", "images", "metadata.jsonl"]
    assert len(list((exported / "images").glob("*.png"))) == len(typo_set)
    loaded = load_image_folder(exported)
    assert torch.equal(loaded.images, typo_set.images)  # PNG is lossless
    assert torch.equal(loaded.labels, typo_set.labels)
    assert torch.equal(loaded.written, typo_set.written)
    assert loaded.captions == typo_set.captions
    assert loaded.classnames == typo_set.classnames


def test_metadata_format(exported, typo_set):
    lines = (exported / "metadata.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["file_name"] == "images/000000.png"
    assert first["label"] == typo_set.classnames[int(typo_set.labels[0])]
    assert first["written"] == typo_set.classnames[int(typo_set.written[0])]
    assert first["caption"] == typo_set.captions[0]
    assert json.loads((exported / "classes.json").read_text()) == list(typo_set.classnames)


def test_clean_set_round_trips_written_as_null(tmp_path):
    clean = MiniWorld().sample("clean", 4, seed=0)
    folder = export_image_set(clean, tmp_path / "clean")
    assert json.loads((folder / "metadata.jsonl").read_text().splitlines()[0])["written"] is None
    assert bool((load_image_folder(folder).written == -1).all())


def test_hand_written_folder_without_classes_json_uses_sorted_labels(tmp_path):
    folder = write_folder(tmp_path / "f", [
        {"file_name": "images/a.png", "label": "zebra"},
        {"file_name": "images/b.png", "label": "apple", "written": "zebra"},
        "",  # blank lines are skipped
    ])
    loaded = load_image_folder(folder)
    assert loaded.classnames == ("apple", "zebra")
    assert loaded.labels.tolist() == [1, 0] and loaded.written.tolist() == [-1, 1]
    assert loaded.captions == []
    assert loaded.images.shape == (2, 3, 8, 8)


def test_captions_must_be_strings_and_null_means_none(tmp_path):
    folder = write_folder(tmp_path / "f", [
        {"file_name": "images/a.png", "label": "zebra", "caption": None},
        {"file_name": "images/b.png", "label": "apple", "caption": "an apple \u2028 on a line of its own"},
    ])
    # json.dumps escapes U+2028; a tool writing ensure_ascii=False leaves it raw, which JSON allows.
    (folder / "metadata.jsonl").write_text((folder / "metadata.jsonl").read_text().replace("\\u2028", "\u2028"),
                                           encoding="utf-8")
    loaded = load_image_folder(folder)
    assert loaded.captions == ["", "an apple \u2028 on a line of its own"]
    for bad in (["a", "list"], 3.5):
        write_folder(tmp_path / "g", [{"file_name": "images/a.png", "label": "zebra", "caption": bad}])
        assert "line 1: \"caption\" must be a string" in load_error(tmp_path / "g")


def test_image_size_resizes_mixed_sizes(tmp_path):
    records = [{"file_name": "images/a.png", "label": "x"}, {"file_name": "images/b.png", "label": "y"}]
    folder = write_folder(tmp_path / "f", records, sizes={"images/a.png": (20, 10), "images/b.png": (9, 9)})
    message = load_error(folder)
    assert "line 2" in message and "9x9" in message and "20x10" in message and "image_size" in message
    loaded = load_image_folder(folder, image_size=6)
    assert loaded.images.shape == (2, 3, 6, 6)
    assert torch.equal(loaded.images[0, :, 0, 0], torch.tensor([10, 200, 30], dtype=torch.uint8))


def test_missing_folder(tmp_path):
    message = load_error(tmp_path / "nowhere")
    assert "nowhere" in message and "not found" in message


def test_missing_metadata(tmp_path):
    (tmp_path / "f").mkdir()
    message = load_error(tmp_path / "f")
    assert "metadata.jsonl" in message and "missing" in message


def test_bad_json_line_names_the_line(exported):
    meta = exported / "metadata.jsonl"
    lines = meta.read_text().splitlines()
    lines[3] = lines[3][:-5]  # truncate the fourth record
    meta.write_text("\n".join(lines) + "\n")
    message = load_error(exported)
    assert str(meta) in message and "line 4" in message and "not valid JSON" in message


def test_record_without_label_names_the_line(tmp_path):
    folder = write_folder(tmp_path / "f", [{"file_name": "images/a.png", "label": "x"}, '{"file_name": "images/a.png"}'])
    message = load_error(folder)
    assert "line 2" in message and '"label"' in message


def test_missing_image_file(exported):
    (exported / "images" / "000005.png").unlink()
    message = load_error(exported)
    assert "line 6" in message and "000005.png" in message and "not found" in message


def test_corrupt_image(exported):
    (exported / "images" / "000002.png").write_bytes(b"\x89PNG this is not an image at all" * 4)
    message = load_error(exported)
    assert "line 3" in message and "000002.png" in message and "cannot decode" in message


def test_label_not_in_classes(exported):
    (exported / "classes.json").write_text(json.dumps(["circle", "square"]))
    message = load_error(exported)
    assert "is not in the class list" in message and "line 1" in message


def test_written_not_in_classes(tmp_path):
    folder = write_folder(tmp_path / "f", [{"file_name": "images/a.png", "label": "x", "written": "y"}], ["x"])
    message = load_error(folder)
    assert "written 'y' is not in the class list" in message


def test_duplicate_classes(exported, typo_set):
    (exported / "classes.json").write_text(json.dumps([*typo_set.classnames, "star"]))
    message = load_error(exported)
    assert "classes.json" in message and "duplicates ['star']" in message


def test_empty_class_list(exported):
    (exported / "classes.json").write_text("[]")
    message = load_error(exported)
    assert "classes.json" in message and "empty" in message


@pytest.mark.parametrize("content", ['{"a": 1}', '["x", 2]', "not json"])
def test_malformed_classes_json(exported, content):
    (exported / "classes.json").write_text(content)
    assert "classes.json" in load_error(exported)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_metadata(tmp_path, content):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "metadata.jsonl").write_text(content)
    message = load_error(tmp_path / "f")
    assert "metadata.jsonl" in message and "lists no images" in message


# --- ImageSet -------------------------------------------------------------------------------------------------

def make_set(n: int = 3, **overrides) -> ImageSet:
    kwargs = dict(images=torch.zeros(n, 3, 4, 4, dtype=torch.uint8), labels=torch.zeros(n, dtype=torch.long),
                  classnames=("a", "b"))
    kwargs.update(overrides)
    return ImageSet(**kwargs)


@pytest.mark.parametrize("overrides, message", [
    ({"classnames": ("a", "b", "a")}, r"duplicates: \['a'\]"),
    ({"classnames": ()}, "class list is empty"),
    ({"labels": torch.tensor([0, 2, 1])}, r"labels must lie in \[0, 1\]"),
    ({"labels": torch.tensor([0, -1, 1])}, r"labels must lie in \[0, 1\]"),
    ({"labels": torch.zeros(2, dtype=torch.long)}, "labels must have shape"),
    ({"images": torch.zeros(3, 3, 4, 4)}, "images must be uint8"),
    ({"images": torch.zeros(3, 1, 4, 4, dtype=torch.uint8)}, "images must be uint8"),
    ({"written": torch.zeros(4, dtype=torch.long)}, "written must have shape"),
    ({"captions": ["one", "two"]}, "2 captions for 3 images"),
])
def test_image_set_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_set(**overrides)


def test_image_set_subset_and_pixels():
    images = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).view(4, 3, 2, 2)
    full = make_set(4, images=images, labels=torch.tensor([0, 1, 0, 1]), captions=["p", "q", "r", "s"])
    assert bool((full.written == -1).all())
    part = full.subset(torch.tensor([False, True, False, True]))
    assert part.captions == ["q", "s"] and part.labels.tolist() == [1, 1]
    assert torch.equal(part.images, images[[1, 3]])
    pixels = full.pixels(slice(0, 2))
    assert pixels.dtype == torch.float32 and torch.allclose(pixels * 255, images[:2].float())
    assert images.dtype == torch.uint8 and int(images.max()) == 47  # pixels() does not modify the stored images
    assert np.isclose(float(full.pixels().max()), 47 / 255)
