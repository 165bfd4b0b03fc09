"""The datasets the loop reads: on-the-fly worlds, lazily decoded folders and preference files, skipping."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader

from vlalign.data.datasets import (
    ImageFolderDataset, MiniWorldDataset, PreferenceJsonlDataset, PreferenceView, TensorImageDataset, collate_skipping,
)
from vlalign.data.folder import DatasetError, export_image_set
from vlalign.data.mini_world import MiniWorld
from vlalign.data.preference import read_preference_rows
from vlalign.training.frozen import precompute

from cli_helpers import interrupt_at


def test_mini_world_items_are_the_rendered_split(world):
    expected = world.sample("typographic", 6, 9, classes=("star", "heart", "moon"))
    lazy = MiniWorldDataset("typographic", 6, 9, classes=("star", "heart", "moon"))
    cached = MiniWorldDataset("typographic", 6, 9, classes=("star", "heart", "moon"), cache=True)
    for i in range(6):
        for data in (lazy, cached):
            item = data[i]
            assert item["index"] == i and torch.equal(item["pixels"], expected.images[i])
            assert (item["label"], item["written"], item["caption"]) == (
                int(expected.labels[i]), int(expected.written[i]), expected.captions[i])
    with pytest.raises(IndexError):
        lazy[6]


def test_people_world_items_are_the_rendered_split():
    from vlalign.data.datasets import PeopleWorldDataset
    from vlalign.data.people import PeopleWorld

    expected = PeopleWorld().sample("train", 5, 3)
    for data in (PeopleWorldDataset("train", 5, 3), PeopleWorldDataset("train", 5, 3, cache=True)):
        for i in range(5):
            item = data[i]
            assert torch.equal(item["pixels"], expected.images.images[i])
            assert (item["label"], item["attribute"], item["occluded"]) == (
                int(expected.images.labels[i]), int(expected.attributes[i]), bool(expected.occluded[i]))


@pytest.fixture
def folder(tmp_path, world):
    images = world.sample("typographic", 8, 4)
    return export_image_set(images, tmp_path / "folder"), images


def test_image_folder_is_decoded_one_image_at_a_time(folder):
    path, images = folder
    data = ImageFolderDataset(path, 64)
    assert len(data) == 8 and data.classnames == images.classnames
    item = data[3]
    assert torch.equal(item["pixels"], images.images[3]) and item["label"] == int(images.labels[3])
    view = PreferenceView(data)[3]
    assert (view["chosen"], view["rejected"]) == (int(images.labels[3]), int(images.written[3]))


def test_corrupt_images_fail_by_default_or_are_skipped_and_counted(folder):
    path, _ = folder
    (path / "images" / "000002.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"metadata.jsonl line 3: cannot decode image .*000002.png"):
        ImageFolderDataset(path, 64)[2]
    data = ImageFolderDataset(path, 64, on_error="skip")
    assert data[2] is None
    batch = next(iter(DataLoader(data, batch_size=4, collate_fn=collate_skipping)))
    assert batch["skipped"] == 1 and batch["index"].tolist() == [0, 1, 3]
    # Frozen quantities are placed by index; the skipped item's row is NaN and never used.
    rows = precompute(data, lambda b: b["pixels"].float().mean((1, 2, 3))[:, None], collate=collate_skipping)
    assert rows.shape == (8, 1) and torch.isnan(rows[2]).all() and torch.isfinite(rows[[0, 1, 3]]).all()
    with pytest.raises(DatasetError, match="every image of a batch of 1 failed"):
        collate_skipping([None])


def test_preference_jsonl_is_read_lazily(tmp_path, folder):
    path, images = folder
    lines = [{"image": f"folder/images/{i:06d}.png", "chosen": images.classnames[int(images.labels[i])],
              "rejected": images.classnames[int(images.written[i])]} for i in range(4)]
    jsonl = tmp_path / "prefs.jsonl"
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rows, prompts = read_preference_rows(jsonl)
    data = PreferenceJsonlDataset(jsonl, 64, rows, prompts)
    item = data[1]
    assert torch.equal(item["pixels"], images.images[1])
    assert prompts[item["chosen"]] == f"a photo of a {lines[1]['chosen']}"
    assert prompts[item["rejected"]] == f"a photo of a {lines[1]['rejected']}"


def test_tensor_dataset_checks_field_lengths():
    with pytest.raises(ValueError, match="field 'label' has 2 entries for 3 items"):
        TensorImageDataset(torch.zeros(3, 3, 8, 8, dtype=torch.uint8), label=[1, 2])
    assert TensorImageDataset(None, n=5)[4] == {"index": 4}


def test_training_on_a_folder_reports_skipped_images(folder, tmp_path, tiny_mini_clip):
    from vlalign.training.loop import fit
    from vlalign.training.methods.preference import ContrastivePreference, PreferenceConfig
    from vlalign.training.train_config import TrainConfig

    path, _ = folder
    (path / "images" / "000005.png").write_bytes(b"broken")
    data = ImageFolderDataset(path, 32, on_error="skip")
    prompts = tuple(f"a photo of a {c}" for c in data.classnames)
    method = ContrastivePreference(tiny_mini_clip, PreferenceView(data), prompts, data, PreferenceConfig())
    result = fit(method, TrainConfig(steps=2, batch_size=8, log_every=1), tmp_path / "run", progress=False)
    assert [row["skipped_pref"] for row in result.history] == [1, 2]  # one broken image per epoch of 8
    assert "skipped_pref" in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]


def test_mini_world_dataset_needs_items():
    with pytest.raises(ValueError, match="n must be >= 1"):
        MiniWorldDataset("clean", 0, 1)
    assert len(MiniWorld().sample("clean", 0, 1)) == 0


def test_content_digest_follows_the_records_and_image_sizes(folder, tmp_path):
    from vlalign.data.datasets import dataset_fingerprint

    path, _ = folder
    first = dataset_fingerprint(ImageFolderDataset(path, 32))
    assert first == dataset_fingerprint(ImageFolderDataset(path, 32)) and len(first["content"]) == 16
    meta = path / "metadata.jsonl"
    lines = [json.loads(line) for line in meta.read_text().splitlines()]
    lines[0]["label"], lines[1]["label"] = lines[1]["label"], lines[0]["label"]  # same count, same classes
    meta.write_text("".join(json.dumps(x) + "\n" for x in lines))
    edited = dataset_fingerprint(ImageFolderDataset(path, 32))
    assert edited["content"] != first["content"] and {k: v for k, v in edited.items() if k != "content"} == {
        k: v for k, v in first.items() if k != "content"}
    image = path / "images" / "000003.png"
    image.write_bytes(image.read_bytes() + b"\0")  # another image of another size under the same name
    assert dataset_fingerprint(ImageFolderDataset(path, 32))["content"] != edited["content"]


def _interrupted_folder_run(folder, tmp_path, tiny_mini_clip, monkeypatch, trainable: str = "full"):
    """A DPO run on an image folder stopped (as by Ctrl-C) at step 2, and a function that builds its method again."""
    from vlalign.training.loop import fit
    from vlalign.training.methods.preference import ContrastivePreference, PreferenceConfig
    from vlalign.training.train_config import TrainConfig

    path, _ = folder
    loop = TrainConfig(steps=4, batch_size=4, checkpoint_every=1, log_every=1)

    def method():
        data = ImageFolderDataset(path, 32)
        prompts = tuple(f"a photo of a {c}" for c in data.classnames)
        return ContrastivePreference(tiny_mini_clip, PreferenceView(data), prompts, data,
                                     PreferenceConfig(trainable=trainable))

    restore = interrupt_at(monkeypatch, ContrastivePreference, 2)
    with pytest.raises(KeyboardInterrupt):
        fit(method(), loop, tmp_path / "run", progress=False)
    restore()
    return method, lambda: fit(method(), loop, tmp_path / "run", progress=False)


@pytest.mark.parametrize("trainable", ["full", "head"])  # head mode reads cached features by index
def test_a_run_does_not_resume_onto_edited_data(folder, tmp_path, tiny_mini_clip, monkeypatch, trainable):
    from vlalign.training.loop import ConfigMismatchError

    _, resume = _interrupted_folder_run(folder, tmp_path, tiny_mini_clip, monkeypatch, trainable)
    path, _ = folder
    meta = path / "metadata.jsonl"
    lines = [json.loads(line) for line in meta.read_text().splitlines()]
    lines[0]["label"], lines[1]["label"] = lines[1]["label"], lines[0]["label"]
    meta.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(ConfigMismatchError, match=r"streams\.pref\.(base\.)+content"):
        resume()


def test_a_state_written_before_content_digests_still_resumes(folder, tmp_path, tiny_mini_clip, monkeypatch):
    """A state whose recorded config has no content digests (an earlier vlalign's) is compared without them."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from vlalign.training.state import config_hash

    _, resume = _interrupted_folder_run(folder, tmp_path, tiny_mini_clip, monkeypatch)
    state = tmp_path / "run" / "state" / "train_state.safetensors"
    with safe_open(str(state), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k, v in metadata.items() if '"config_hash"' in v)
    meta = json.loads(metadata[key])
    strip = lambda v: {k: strip(x) for k, x in v.items() if k != "content"} if isinstance(v, dict) else v  # noqa: E731
    meta["config"]["streams"] = strip(meta["config"]["streams"])
    meta["config_hash"] = config_hash(meta["config"])
    save_file(tensors, str(state), metadata={**metadata, key: json.dumps(meta)})
    assert resume().start_step == 2
