"""Per-image results (predictions.jsonl, failure grids) and images carrying several written words."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlalign.cli import main
from vlalign.data.folder import export_image_set, load_image_folder
from vlalign.data.image_set import ImageSet
from vlalign.data.mini_world import MiniWorld
from vlalign.data.preference import preference_from_typographic
from vlalign.evaluation.predictions import top_k, zero_shot_records
from vlalign.evaluation.zero_shot import written_label_rate

CLASSES = ("star", "heart", "moon", "ring")


def test_written_label_rate_counts_any_written_word():
    predictions = torch.tensor([1, 2, 0, 3, 1])
    written = torch.tensor([[1, 2], [3, -1], [-1, -1], [2, 3], [-1, 1]])
    # image 0: 1 in {1, 2} yes; image 1: 2 not in {3} no; image 2: no word, not counted; 3: yes; 4: yes.
    assert written_label_rate(predictions, written) == pytest.approx(3 / 4)
    # One word per image is the old [N] form, and gives the same as a one-column [N, 1].
    one = torch.tensor([1, 3, -1, 2, 1])
    assert written_label_rate(predictions, one) == written_label_rate(predictions, one[:, None]) == pytest.approx(2 / 4)


def test_written_label_rate_matches_a_loop_on_random_data():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        n, w, k = 50, 3, 6
        predictions = torch.randint(0, k, (n,), generator=generator)
        written = torch.randint(-1, k, (n, w), generator=generator)
        counted = hits = 0
        for p, words in zip(predictions.tolist(), written.tolist()):
            words = [x for x in words if x >= 0]
            if words:
                counted += 1
                hits += p in words
        if counted:
            assert written_label_rate(predictions, written) == pytest.approx(hits / counted)


def write_folder(folder: Path, written: list) -> Path:
    (folder / "images").mkdir(parents=True)
    lines = []
    for i, words in enumerate(written):
        Image.new("RGB", (16, 16), (30 * i, 60, 90)).save(folder / f"images/photo_{i}.png")
        lines.append(json.dumps({"file_name": f"images/photo_{i}.png", "label": CLASSES[i % 4], "written": words}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "classes.json").write_text(json.dumps(list(CLASSES)))
    return folder


def test_a_folder_with_several_written_words_per_image(tmp_path):
    folder = write_folder(tmp_path / "f", [["heart", "moon"], "moon", None, [], ["ring", "ring"]])
    images = load_image_folder(folder)
    assert images.written.tolist() == [[1, 2], [2, -1], [-1, -1], [-1, -1], [3, -1]]
    assert [images.written_words(i) for i in range(5)] == [[1, 2], [2], [], [], [3]]
    assert images.files == [f"images/photo_{i}.png" for i in range(5)]
    # Round trip: lists stay lists, file names are kept.
    again = load_image_folder(export_image_set(images, tmp_path / "copy"))
    assert torch.equal(again.written, images.written) and again.files == images.files
    assert json.loads((tmp_path / "copy" / "metadata.jsonl").read_text().splitlines()[0])["written"] == ["heart", "moon"]


def test_one_word_folders_keep_their_old_form(tmp_path):
    images = load_image_folder(write_folder(tmp_path / "f", ["heart", None, "ring"]))
    assert images.written.tolist() == [1, -1, 3]
    lines = (export_image_set(images, tmp_path / "copy") / "metadata.jsonl").read_text().splitlines()
    assert [json.loads(line)["written"] for line in lines] == ["heart", None, "ring"]


def test_a_bad_written_list_names_the_line(tmp_path):
    from vlalign.data.folder import DatasetError

    with pytest.raises(DatasetError, match=r"metadata.jsonl line 2: written 'cat' is not in the class list"):
        load_image_folder(write_folder(tmp_path / "a", ["heart", ["moon", "cat"]]))
    with pytest.raises(DatasetError, match=r"line 1: written must be a class name, a list of class names or null"):
        load_image_folder(write_folder(tmp_path / "b", [[1, 2]]))


def test_preference_triplets_from_several_written_words():
    images = ImageSet(torch.zeros(3, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 2]), CLASSES,
                      torch.tensor([[1, 2], [3, -1], [0, 3]]))
    pref = preference_from_typographic(images)
    assert pref.chosen.tolist() == [0, 0, 1, 2, 2] and pref.rejected.tolist() == [1, 2, 3, 0, 3]
    with pytest.raises(ValueError, match="every image needs a written class name"):
        preference_from_typographic(ImageSet(images.images, images.labels, CLASSES, torch.tensor([[1, 2], [-1, -1], [0, 3]])))


def test_records_hold_label_words_prediction_and_top_k():
    images = ImageSet(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), CLASSES,
                      torch.tensor([[1, 2], [-1, -1]]), files=["a.png", "b.png"])
    logits = torch.tensor([[1.0, 3.0, 0.0, -1.0], [0.0, 2.0, 2.5, 0.0]])
    records = zero_shot_records(images, logits, k=2)
    probabilities = torch.softmax(logits.double(), 1)
    assert records[0] == {
        "index": 0, "file": "a.png", "label": "star", "written": ["heart", "moon"], "prediction": "heart",
        "correct": False, "follows_written": True,
        "top_k": [{"class": "heart", "probability": round(float(probabilities[0, 1]), 6)},
                  {"class": "star", "probability": round(float(probabilities[0, 0]), 6)}]}
    assert records[1]["written"] == [] and records[1]["prediction"] == "moon" and not records[1]["follows_written"]
    values, indices = top_k(logits, 10)  # k above the class count is capped
    assert indices.shape == (2, 4) and torch.allclose(values.sum(1), torch.ones(2, dtype=torch.float64))


def test_eval_writes_predictions_and_a_failure_grid(tmp_path):
    out = tmp_path / "eval"
    assert main(["eval", "--split", "typographic", "--n", "24", "--seed", "3", "--top-k", "3", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(24))
    assert sum(r["correct"] for r in records) / 24 == pytest.approx(metrics["accuracy"])
    assert sum(r["follows_written"] for r in records) / 24 == pytest.approx(metrics["written_label_rate"])
    assert all(len(r["top_k"]) == 3 and r["top_k"][0]["class"] == r["prediction"] for r in records)
    with Image.open(out / "failures.png") as grid:
        assert grid.format == "PNG" and grid.size[0] > 800


def test_eval_on_a_folder_names_the_files(tmp_path):
    folder = export_image_set(MiniWorld().sample("typographic", 6, seed=0), tmp_path / "data")
    assert main(["eval", "--data", str(folder), "--out", str(tmp_path / "o")]) == 0
    records = [json.loads(line) for line in (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()]
    assert [r["file"] for r in records] == [f"images/{i:06d}.png" for i in range(6)]
    assert all(len(r["written"]) == 1 for r in records)


def test_robust_eval_writes_per_image_predictions_under_every_attack(tmp_path):
    out = tmp_path / "robust"
    assert main(["robust-eval", "--n", "12", "--attack", "pgd", "--eps", "2/255,8/255", "--steps", "3",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 12
    for eps in ("2/255", "8/255"):
        survived = sum(r["attacks"]["pgd"][eps] == r["label"] for r in records) / 12
        assert survived == pytest.approx(metrics["robust"]["pgd"][eps])
    assert sum(r["correct"] for r in records) / 12 == pytest.approx(metrics["clean"])
    if metrics["robust"]["pgd"]["8/255"] < metrics["clean"]:
        with Image.open(out / "failures.png") as grid:
            assert grid.format == "PNG"


def test_kept_adversarial_examples_are_the_fooled_ones(mini_model):
    from vlalign.evaluation.robust import robust_evaluate

    images = MiniWorld().sample("clean", 12, seed=4)
    result = robust_evaluate(mini_model, images, "pgd", [8 / 255], steps=3, steps_check=False, keep_examples=5)
    index, adversarial = result.examples["pgd"][8 / 255]
    predicted = result.predictions["pgd"][8 / 255]
    fooled = (result.clean_correct & (predicted != images.labels)).nonzero().squeeze(1)
    assert index.tolist() == fooled[:5].tolist()
    assert adversarial.dtype == torch.uint8 and adversarial.shape == (len(index), 3, 64, 64)
    # Inside the ε-ball of their clean images (up to the rounding to 8 bits).
    diff = (adversarial.float() - images.images[index].float()).abs().max()
    assert diff <= 8 + 1
