"""VQAv2 and COCO-captions files: export of the mini world, loading back (round trip), clear errors; unlabelled
image folders; ``vlalign data export --split vqa|captions`` and ``vlalign robust-eval --task vqa|caption``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlalign.cli import main
from vlalign.data.folder import DatasetError
from vlalign.data.unlabelled import UnlabelledImages
from vlalign.data.vqa import MiniCaptions, MiniVQA
from vlalign.data.vqa_formats import (
    CocoCaptionsDataset, VQADataset, export_captions, export_vqa, load_captions_folder, load_vqa_folder,
)
from vlalign.evaluation.vqa import normalize_answer, vqa_accuracy

from vlm_helpers import tiny_mini_vlm


def test_vqa_round_trip(tmp_path):
    source = MiniVQA(12, seed=3)
    export_vqa(source, tmp_path / "vqa")
    loaded = load_vqa_folder(tmp_path / "vqa")
    assert len(loaded) == 12
    for i in range(12):
        a, b = source[i], loaded[i]
        assert torch.equal(a["pixels"], b["pixels"])  # PNG is lossless
        assert (a["prompt"], a["answer"], a["question_type"]) == (b["prompt"], b["answer"], b["question_type"])
        humans = loaded.answers(i)
        assert len(humans) == 10 and {normalize_answer(h) for h in humans} == {a["answer"]}
        assert vqa_accuracy(a["answer"], humans) == 1.0
    questions = json.loads((tmp_path / "vqa" / "questions.json").read_text())
    assert questions["data_subtype"] == "mini" and questions["questions"][0].keys() == {"image_id", "question", "question_id"}
    assert (tmp_path / "vqa" / "images" / "COCO_mini_000000000000.png").is_file()


def test_captions_round_trip(tmp_path):
    source = MiniCaptions(5, seed=2)
    export_captions(source, tmp_path / "captions")
    loaded = load_captions_folder(tmp_path / "captions", image_size=32)
    assert len(loaded) == 5
    for i in range(5):
        assert loaded.references(i) == source.references(i)
        assert loaded[i]["caption"] == source[i]["caption"] and loaded[i]["pixels"].shape == (3, 32, 32)
    data = json.loads((tmp_path / "captions" / "captions.json").read_text())
    assert len(data["annotations"]) == 15 and len({a["id"] for a in data["annotations"]}) == 15


def test_vqa_loader_errors_name_the_file_and_field(tmp_path):
    export_vqa(MiniVQA(3, seed=0), tmp_path / "vqa")
    questions, annotations, images = (tmp_path / "vqa" / n for n in ("questions.json", "annotations.json", "images"))
    with pytest.raises(DatasetError, match="VQAv2 questions file not found"):
        VQADataset(tmp_path / "nope.json", annotations, images)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DatasetError, match="bad.json: not valid JSON"):
        VQADataset(bad, annotations, images)
    data = json.loads(questions.read_text())
    data["questions"][1]["question"] = 7
    bad.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"questions\[1\] needs field 'question' of type str"):
        VQADataset(bad, annotations, images)
    data = json.loads(questions.read_text())
    data["questions"][2]["question_id"] = 99
    bad.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="no annotation for question_id 99"):
        VQADataset(bad, annotations, images)
    (images / "COCO_mini_000000000001.png").unlink()
    with pytest.raises(DatasetError, match=r"questions\[1\]: image .*COCO_mini_000000000001.* not found"):
        VQADataset(questions, annotations, images)


def test_caption_loader_errors(tmp_path):
    export_captions(MiniCaptions(2, seed=0), tmp_path / "c")
    data = json.loads((tmp_path / "c" / "captions.json").read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 1]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"images\[1\] \(id 1\) has no caption"):
        CocoCaptionsDataset(tmp_path / "bad.json", tmp_path / "c" / "images")
    with pytest.raises(DatasetError, match="image root not found"):
        CocoCaptionsDataset(tmp_path / "c" / "captions.json", tmp_path / "nowhere")


def test_unlabelled_images(tmp_path):
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(tmp_path / "imgs" / "b.png")
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "imgs" / "sub" / "a.jpg")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    data = UnlabelledImages(tmp_path / "imgs", image_size=16)
    assert len(data) == 2 and data[0]["pixels"].shape == (3, 16, 16) and data[1]["index"] == 1
    assert int(data[0]["pixels"].max()) == 200
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        UnlabelledImages(tmp_path / "empty", 16)
    with pytest.raises(DatasetError, match="image folder not found"):
        UnlabelledImages(tmp_path / "missing", 16)


def test_data_export_command(tmp_path, capsys):
    assert main(["data", "export", "--split", "vqa", "--n", "5", "--seed", "1", "--out", str(tmp_path / "v")]) == 0
    assert len(load_vqa_folder(tmp_path / "v")) == 5
    assert main(["data", "export", "--split", "captions", "--n", "3", "--out", str(tmp_path / "c")]) == 0
    assert len(load_captions_folder(tmp_path / "c")) == 3
    assert "COCO-captions format" in capsys.readouterr().out


@pytest.mark.parametrize("task", ["vqa", "caption"])
def test_robust_eval_command_on_a_vlm(tmp_path, capsys, task):
    tiny_mini_vlm(seed=4).save(tmp_path / "vlm")
    split = "vqa" if task == "vqa" else "captions"
    assert main(["data", "export", "--split", split, "--n", "4", "--out", str(tmp_path / "data")]) == 0
    code = main(["robust-eval", "--task", task, "--model", str(tmp_path / "vlm"), "--data", str(tmp_path / "data"),
                 "--attack", "pgd", "--eps", "2/255,8/255", "--steps", "2", "--max-new-tokens", "4",
                 "--out", str(tmp_path / "out")])
    assert code == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["task"] == task and set(metrics["worst_case"]) == {"2/255", "8/255"} and metrics["n"] == 4
    assert (task == "vqa") == ("by_type" in metrics)
    assert "Gradient-masking checks" in (tmp_path / "out" / "report.md").read_text()
    code = main(["robust-eval", "--task", task, "--model", str(tmp_path / "vlm"), "--attack", "apgd-t",
                 "--out", str(tmp_path / "bad")])
    assert code == 2 and "do not apply to a generative VLM" in capsys.readouterr().err


def _duplicate(records: list, index: int, **changes) -> None:
    records.append({**records[index], **changes})


VQA_DEFECTS = {  # name -> (file, mutation of its JSON, expected message)
    "empty question": ("questions", lambda d: d["questions"][1].update(question=""),
                       r"questions.json: questions\[1\] field 'question' is empty \(''\)"),
    "blank question": ("questions", lambda d: d["questions"][2].update(question=" \t"),
                       r"questions.json: questions\[2\] field 'question' is empty"),
    "blank answer": ("annotations", lambda d: d["annotations"][2].update(multiple_choice_answer="  "),
                     r"annotations.json: annotations\[2\] field 'multiple_choice_answer' is empty"),
    "repeated annotation": ("annotations", lambda d: _duplicate(d["annotations"], 0, multiple_choice_answer="zzz"),
                            r"annotations.json: annotations\[3\] repeats question_id 0 of annotations\[0\]"),
    "repeated question": ("questions", lambda d: _duplicate(d["questions"], 1),
                          r"questions.json: questions\[3\] repeats question_id 1 of questions\[1\]"),
    "other image": ("annotations", lambda d: d["annotations"][1].update(image_id=2),
                    r"annotations.json: the annotation of question_id 1 has image_id 2, but .*questions.json "
                    r"questions\[1\] has image_id 1"),
    "null subtype": ("questions", lambda d: d.update(data_subtype=None),
                     r"questions.json: \"data_subtype\" must be a string .*got None"),
    "numeric subtype": ("annotations", lambda d: d.update(data_subtype=2014),
                        r"annotations.json: \"data_subtype\" must be a string .*got 2014"),
}


@pytest.mark.parametrize("defect", sorted(VQA_DEFECTS))
def test_vqa_loader_rejects_inconsistent_files(tmp_path, defect):
    """Each defect was accepted silently before (a wrong pair scored, an empty reference, a 'COCO_None_' path)."""
    folder = export_vqa(MiniVQA(3, seed=0), tmp_path / "vqa")
    assert len(load_vqa_folder(folder)) == 3  # the exported files are fine
    which, mutate, message = VQA_DEFECTS[defect]
    data = json.loads((folder / f"{which}.json").read_text())
    mutate(data)
    (folder / f"{which}.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=message):
        load_vqa_folder(folder)


CAPTION_DEFECTS = {
    "empty caption": (lambda d: d["annotations"][4].update(caption=""),
                      r"captions.json: annotations\[4\] field 'caption' is empty"),
    "blank caption": (lambda d: d["annotations"][0].update(caption="\n "),
                      r"captions.json: annotations\[0\] field 'caption' is empty"),
    "repeated image": (lambda d: _duplicate(d["images"], 0),
                       r"captions.json: images\[2\] repeats id 0 of images\[0\]"),
    "caption of no image": (lambda d: d["annotations"][5].update(image_id=99),
                            r"captions.json: annotations\[5\] has image_id 99, which no entry of \"images\" has"),
}


@pytest.mark.parametrize("defect", sorted(CAPTION_DEFECTS))
def test_caption_loader_rejects_inconsistent_files(tmp_path, defect):
    folder = export_captions(MiniCaptions(2, seed=0), tmp_path / "c")
    assert len(load_captions_folder(folder)) == 2
    mutate, message = CAPTION_DEFECTS[defect]
    data = json.loads((folder / "captions.json").read_text())
    mutate(data)
    (folder / "captions.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=message):
        load_captions_folder(folder)


def test_vqa_subtype_from_the_annotations_file(tmp_path):
    """A questions file without data_subtype takes the annotations file's (a valid string) for the image names."""
    folder = export_vqa(MiniVQA(2, seed=0), tmp_path / "vqa")
    data = json.loads((folder / "questions.json").read_text())
    del data["data_subtype"]
    (folder / "questions.json").write_text(json.dumps(data))
    loaded = load_vqa_folder(folder)
    assert loaded.subtype == "mini" and loaded.items[1][2].name == "COCO_mini_000000000001.png"
