"""Karpathy-split JSON: the mini world's export read back, lazily and in memory, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vlalign.cli import main
from vlalign.data.folder import DatasetError
from vlalign.data.karpathy import KarpathyDataset, export_karpathy, load_karpathy_split
from vlalign.data.retrieval_set import RetrievalSet, collate_retrieval, flatten_captions
from vlalign.data.retrieval_world import RetrievalWorld


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("karpathy")
    assert main(["data", "export", "--split", "retrieval", "--n", "4", "--seed", "2", "--out", str(folder)]) == 0
    return folder


def test_export_round_trip(exported):
    data = json.loads((exported / "dataset.json").read_text())
    assert [image["split"] for image in data["images"]] == ["train"] * 4 + ["val"] * 4 + ["test"] * 4
    world = RetrievalWorld()
    for split in ("train", "val", "test"):
        expected = world.sample(split, 4, seed=2)
        lazy = KarpathyDataset(exported / "dataset.json", exported, split)
        assert len(lazy) == 4 and lazy.captions == expected.captions
        item = lazy[1]
        assert item["index"] == 1 and item["pixels"].dtype == torch.uint8
        assert torch.equal(item["pixels"], expected.images[1])  # PNG is lossless
        memory = load_karpathy_split(exported / "dataset.json", exported, split)
        assert torch.equal(memory.images, expected.images) and memory.captions == expected.captions
    entry = data["images"][0]
    assert entry["filepath"] == "images/train" and (exported / entry["filepath"] / entry["filename"]).is_file()
    assert [s["raw"] for s in entry["sentences"]] == world.sample("train", 1, seed=2).captions[0]
    assert " ".join(entry["sentences"][0]["tokens"]) == entry["sentences"][0]["raw"].replace(";", "").replace(",", "").replace(":", "")


def test_batches_through_a_dataloader(exported):
    dataset = KarpathyDataset(exported / "dataset.json", exported, "test")
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collate_retrieval)))
    assert batch["index"].tolist() == [0, 1, 2] and batch["pixels"].shape == (3, 3, 64, 64)
    assert len(batch["captions"]) == 3 and all(len(c) == 5 for c in batch["captions"])
    texts, owner = flatten_captions(batch["captions"])
    assert len(texts) == 15 and owner.tolist() == [0] * 5 + [1] * 5 + [2] * 5


def _write(folder, images, size=(40, 30)):
    for image in images:
        path = folder / image.get("filepath", "") / image["filename"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size[1], size[0], 3), 90, dtype=np.uint8)).save(path)
    (folder / "data.json").write_text(json.dumps({"images": images}))
    return folder / "data.json"


def _image(name, split, n=5, filepath=None):
    entry = {"filename": name, "split": split, "sentences": [{"raw": f"caption {k} of {name}"} for k in range(n)]}
    if filepath is not None:
        entry["filepath"] = filepath
    return entry


def test_flickr_style_without_filepath_train_with_restval_and_extra_captions(tmp_path):
    path = _write(tmp_path, [_image("a.jpg", "train", 6), _image("b.jpg", "restval"), _image("c.jpg", "test")])
    train = KarpathyDataset(path, tmp_path, "train", image_size=16)
    assert len(train) == 2 and len(train.captions[0]) == 5  # COCO's sixth caption is dropped
    assert train[0]["pixels"].shape == (3, 16, 16)  # resized and centre-cropped
    with pytest.raises(DatasetError, match="differ in size|no images"):
        KarpathyDataset(path, tmp_path, "val")


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.update(images="x"), r"expected an object with an \"images\" list"),
    (lambda d: d["images"][1].pop("filename"), r"images\[1\]: missing the string field \"filename\""),
    (lambda d: d["images"][1].update(split="dev"), r"images\[1\] \(b.jpg\): \"split\" must be one of"),
    (lambda d: d["images"][1].pop("sentences"), r"images\[1\] \(b.jpg\): missing the \"sentences\" list"),
    (lambda d: d["images"][1]["sentences"][2].update(raw=""), r"images\[1\] \(b.jpg\): sentences\[2\] has no"),
    (lambda d: d["images"][1]["sentences"].pop(), r"images\[1\] \(b.jpg\): has 4 sentences, fewer than"),
])
def test_malformed_entries_name_the_file_and_entry(tmp_path, mutate, match):
    path = _write(tmp_path, [_image("a.jpg", "test", filepath="val"), _image("b.jpg", "test", filepath="val")])
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=match) as info:
        KarpathyDataset(path, tmp_path, "test")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_files_and_bad_json(tmp_path):
    path = _write(tmp_path, [_image("a.jpg", "test", filepath="val"), _image("b.jpg", "test", filepath="val")])
    (tmp_path / "val" / "b.jpg").unlink()
    with pytest.raises(DatasetError, match=r"image val/b.jpg of split 'test' \(item 1\) not found"):
        KarpathyDataset(path, tmp_path, "test")
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        KarpathyDataset(path, tmp_path, "test")
    with pytest.raises(DatasetError, match="Karpathy-split JSON not found"):
        KarpathyDataset(tmp_path / "none.json", tmp_path, "test")
    with pytest.raises(DatasetError, match="image root folder not found"):
        KarpathyDataset(path, tmp_path / "nowhere", "test")
    with pytest.raises(ValueError, match="unknown Karpathy split"):
        KarpathyDataset(path, tmp_path, "dev")


def test_corrupt_image_is_reported_when_read(tmp_path):
    path = _write(tmp_path, [_image("a.jpg", "test")])
    (tmp_path / "a.jpg").write_bytes(b"not an image")
    dataset = KarpathyDataset(path, tmp_path, "test")
    with pytest.raises(DatasetError, match=r"data.json \(a.jpg\): cannot decode image"):
        dataset[0]


def test_export_writes_given_parts(tmp_path):
    data = RetrievalSet(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), [["one", "two"], ["three", "four"]])
    path = export_karpathy({"test": data}, tmp_path)
    back = load_karpathy_split(path, tmp_path, "test", captions_per_image=2)
    assert back.captions == data.captions and torch.equal(back.images, data.images)
    with pytest.raises(ValueError, match="unknown split name"):
        export_karpathy({"dev": data}, tmp_path)
    with pytest.raises(ValueError, match=r"captions\[1\]"):
        RetrievalSet(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), [["one"], []])
