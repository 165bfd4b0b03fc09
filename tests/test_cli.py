"""The command line, run in-process through ``vlalign.cli.main``."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlalign.cli import main
from vlalign.data.folder import load_image_folder
from vlalign.data.mini_world import MiniWorld
from vlalign.evaluation.zero_shot import zero_shot_evaluate
from vlalign.pipelines import train as registry
from vlalign.pipelines.runs import RunOutcome

from cli_helpers import run_user_error


def run_ok(argv: list[str]) -> None:
    assert main([str(a) for a in argv]) == 0


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "clean"
    run_ok(["data", "export", "--split", "clean", "--n", 24, "--seed", 3, "--out", out])
    return out


def test_eval_clean_split(tmp_path, mini_model):
    run_ok(["eval", "--model", "mini", "--split", "clean", "--n", 24, "--seed", 3, "--out", tmp_path])
    metrics = read_json(tmp_path / "metrics.json")
    assert metrics["n"] == 24 and metrics["model"] == "mini" and metrics["seed"] == 3
    assert "written_label_rate" not in metrics
    expected = zero_shot_evaluate(mini_model, MiniWorld().sample("clean", 24, 3))
    assert metrics["accuracy"] == pytest.approx(expected.accuracy)


def test_eval_typographic_split_reports_written_label_rate(tmp_path, mini_model):
    run_ok(["eval", "--split", "typographic", "--n", 24, "--seed", 3, "--out", tmp_path])
    metrics = read_json(tmp_path / "metrics.json")
    expected = zero_shot_evaluate(mini_model, MiniWorld().sample("typographic", 24, 3))
    assert metrics["accuracy"] == pytest.approx(expected.accuracy)
    assert metrics["written_label_rate"] == pytest.approx(expected.written_label_rate)
    assert 0 <= metrics["written_label_rate"] <= 1


def test_data_export(exported):
    images = sorted((exported / "images").glob("*.png"))
    assert len(images) == 24 and Image.open(images[0]).size == (64, 64)
    assert len((exported / "metadata.jsonl").read_text().splitlines()) == 24
    loaded = load_image_folder(exported)
    assert torch.equal(loaded.images, MiniWorld().sample("clean", 24, 3).images)


def test_eval_on_a_folder_equals_eval_on_the_split(tmp_path, exported):
    run_ok(["eval", "--data", exported, "--out", tmp_path / "folder"])
    run_ok(["eval", "--split", "clean", "--n", 24, "--seed", 3, "--out", tmp_path / "split"])
    from_folder, from_split = read_json(tmp_path / "folder" / "metrics.json"), read_json(tmp_path / "split" / "metrics.json")
    assert from_folder["source"] == str(exported) and from_folder["n"] == 24
    assert from_folder["accuracy"] == from_split["accuracy"]


def test_data_typographic_on_an_exported_folder(tmp_path, exported):
    out = tmp_path / "attacked"
    run_ok(["data", "typographic", "--data", exported, "--seed", 1, "--instances", 2, "--out", out])
    source, attacked = load_image_folder(exported), load_image_folder(out)
    assert attacked.classnames == source.classnames and torch.equal(attacked.labels, source.labels)
    assert bool((attacked.written >= 0).all()) and bool((attacked.written != attacked.labels).all())
    assert all(not torch.equal(a, b) for a, b in zip(attacked.images, source.images))
    # An attacked folder is evaluated like any other, and reports how often the written word wins.
    run_ok(["eval", "--data", out, "--out", tmp_path / "eval"])
    assert "written_label_rate" in read_json(tmp_path / "eval" / "metrics.json")


def test_data_typographic_keeps_earlier_words_and_attacks_each_image_on_its_own(tmp_path, exported):
    once, twice = tmp_path / "once", tmp_path / "twice"
    run_ok(["data", "typographic", "--data", exported, "--seed", 1, "--out", once])
    run_ok(["data", "typographic", "--data", once, "--seed", 2, "--out", twice])
    first, second = load_image_folder(once), load_image_folder(twice)
    for i in range(len(first)):
        earlier, now = first.written_words(i), second.written_words(i)
        assert now[:len(earlier)] == earlier and len(now) in (len(earlier), len(earlier) + 1)
    assert any(len(second.written_words(i)) == 2 for i in range(len(second)))
    # An image's attack depends only on (seed, its file), not on the images before it: the last three alone, in
    # reverse order, get the attacks they got in the whole folder.
    subset = tmp_path / "subset"
    shutil.copytree(exported, subset)
    lines = (subset / "metadata.jsonl").read_text().splitlines()
    (subset / "metadata.jsonl").write_text("\n".join(lines[-3:][::-1]) + "\n")
    run_ok(["data", "typographic", "--data", subset, "--seed", 1, "--out", tmp_path / "subset-once"])
    assert torch.equal(load_image_folder(tmp_path / "subset-once").images, first.images[-3:].flip(0))


def test_demo(tmp_path):
    # --fix-steps 3: the DPO fix path runs end to end; its effect is measured by the typographic experiment.
    run_ok(["demo", "--n", 48, "--seed", 5, "--fix-steps", 3, "--out", tmp_path])
    metrics = read_json(tmp_path / "metrics.json")
    assert set(metrics) == {"pretrained", "dpo"}
    before = metrics["pretrained"]
    assert set(before) == {"clean", "typographic", "nonreading", "matching", "zeroshot-clean", "zeroshot-typographic",
                           "zeroshot-nonreading"}
    assert all(before[s]["n"] == 48 for s in before)
    assert "written_label_rate" in before["typographic"] and "written_label_rate" not in before["clean"]
    assert "written_label_rate" not in before["nonreading"]  # random letters are no class name
    # The shipped model's phenomenon shows even on 48 images: it reads, and a wrong word fools it.
    assert before["clean"]["accuracy"] > before["typographic"]["accuracy"]
    report = (tmp_path / "report.md").read_text()
    assert "| typographic" in report and "typographic_grid.png" in report and "typographic_grid_dpo.png" in report
    effect = 100 * (before["nonreading"]["accuracy"] - before["typographic"]["accuracy"])
    assert "| non-reading (random letters)" in report
    line = next(row for row in report.splitlines() if row.startswith("| **reading effect** "))
    assert line.split("|")[2].strip() == f"{effect:+.1f} pt"
    assert (tmp_path / "report.html").is_file() and read_json(tmp_path / "report.json")["kind"] == "demo"
    # vlalign report rebuilds the same body from the run's files
    (tmp_path / "report.md").unlink()
    run_ok(["report", tmp_path])
    assert (tmp_path / "report.md").read_text().split("## Run")[0] == report.split("## Run")[0]
    for name in ("typographic_grid.png", "typographic_grid_dpo.png"):
        with Image.open(tmp_path / name) as grid:
            assert grid.format == "PNG" and grid.size[0] > 500


# --- bad inputs: exit code 2 and one line ---------------------------------------------------------------------

def test_eval_with_a_missing_model_folder(tmp_path, capsys):
    err = run_user_error(capsys, ["eval", "--model", tmp_path / "no_model", "--n", 4, "--out", tmp_path / "o"])
    assert str(tmp_path / "no_model") in err and "not found" in err
    assert not (tmp_path / "o").exists()


def test_eval_with_an_unknown_hub_id_offline(tmp_path, capsys):
    # conftest sets HF_HUB_OFFLINE: nothing is downloaded, and the failure is one line naming the model.
    err = run_user_error(capsys, ["eval", "--model", "no-such-owner/no-such-clip", "--out", tmp_path / "o"])
    assert "no-such-owner/no-such-clip: no such folder, and not in the local hub cache" in err
    assert "HF_HUB_OFFLINE=0" in err  # and how to go online


def test_eval_with_a_model_folder_without_config(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    err = run_user_error(capsys, ["eval", "--model", tmp_path / "m", "--out", tmp_path / "o"])
    assert "config.json" in err


def test_eval_with_a_missing_data_folder(tmp_path, capsys):
    err = run_user_error(capsys, ["eval", "--data", tmp_path / "nothing", "--out", tmp_path / "o"])
    assert "nothing" in err and "not found" in err


def test_eval_with_a_bad_split_or_template(tmp_path, capsys):
    assert "unknown split 'muddy'" in run_user_error(capsys, ["eval", "--split", "muddy", "--out", tmp_path])
    assert "--template must contain" in run_user_error(capsys, ["eval", "--template", "a photo", "--out", tmp_path])


def test_data_typographic_on_a_broken_folder(tmp_path, capsys, exported):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.jsonl").write_text('{"file_name": "images/x.png", "label": "star"}\n')
    err = run_user_error(capsys, ["data", "typographic", "--data", broken, "--out", tmp_path / "o"])
    assert "line 1" in err and "x.png" in err


def test_pretrain_with_a_bad_config_key(tmp_path, capsys):
    config = tmp_path / "pretrain.yaml"
    config.write_text("train: {steps: 2}\nmodel:\n  vision_widht: 16\n")
    err = run_user_error(capsys, ["pretrain-mini", "--config", config, "--out", tmp_path / "o"])
    assert str(config) in err and "model.vision_widht" in err
    assert not (tmp_path / "o").exists()


def test_pretrain_with_a_missing_or_malformed_config(tmp_path, capsys):
    err = run_user_error(capsys, ["pretrain-mini", "--config", tmp_path / "none.yaml", "--out", tmp_path / "o"])
    assert "none.yaml: config file not found" in err
    (tmp_path / "bad.yaml").write_text("steps: [1\n")
    err = run_user_error(capsys, ["pretrain-mini", "--config", tmp_path / "bad.yaml", "--out", tmp_path / "o"])
    assert "bad.yaml: not valid YAML" in err


@dataclass
class ToyTrainConfig:
    method: str = "toy"
    steps: int = 1


def toy_train(config: ToyTrainConfig, out: Path, progress: bool = True, overwrite: bool = False) -> RunOutcome:
    out.mkdir(parents=True, exist_ok=True)
    (out / "done.txt").write_text(str(config.steps))
    return RunOutcome(out, metrics={"steps": config.steps})


@pytest.fixture
def toy_method(monkeypatch):
    monkeypatch.setitem(registry.TRAINERS, "toy", f"{__name__}:ToyTrainConfig:toy_train")


def test_train_dispatches_on_method(tmp_path, toy_method):
    (tmp_path / "toy.yaml").write_text("method: toy\nsteps: 3\n")
    run_ok(["train", "--config", tmp_path / "toy.yaml", "--out", tmp_path / "o"])
    assert (tmp_path / "o" / "done.txt").read_text() == "3"


def test_train_with_a_bad_config_key(tmp_path, capsys, toy_method):
    config = tmp_path / "toy.yaml"
    config.write_text("method: toy\nstepz: 3\n")
    err = run_user_error(capsys, ["train", "--config", config, "--out", tmp_path / "o"])
    assert str(config) in err and "stepz" in err and "ToyTrainConfig" in err


def test_train_with_an_unknown_method(tmp_path, capsys):
    config = tmp_path / "x.yaml"
    config.write_text("method: telepathy\n")
    err = run_user_error(capsys, ["train", "--config", config, "--out", tmp_path / "o"])
    assert "unknown training method 'telepathy'" in err and "dpo" in err


def test_missing_required_argument_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval"])
    assert info.value.code == 2
    assert "--out" in capsys.readouterr().err
