"""Bad command-line input and bad files fail early in one line that names the option, file or field, and an
``--out`` never replaces the results of a run of another kind (review_k findings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.cli_helpers import digest, run_user_error
from vlalign.cli import main

TINY_DPO = {"method": "dpo", "model": "mini",
            "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 2, "log_every": 1},
            "data": {"n_pref": 8, "n_reg": 8, "seed": 100}, "eval": {"images": 8, "seed": 5000}}


def fake_run(folder: Path, kind: str, state: bool = False) -> Path:
    """A run folder of ``kind`` as vlalign leaves it: results, ``report.json`` (and a training ``state/``)."""
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))
    (folder / "report.md").write_text(f"# a {kind} run\n")
    (folder / "report.json").write_text(json.dumps({"kind": kind, "title": "x"}))
    if state:
        (folder / "state").mkdir()
        (folder / "state" / "train_state.json").write_text("{}")
    return folder


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def image_folder(folder: Path, labels: list[str]) -> Path:
    (folder / "images").mkdir(parents=True)
    lines = []
    for i, label in enumerate(labels):
        Image.new("RGB", (64, 64), (30 * i, 90, 160)).save(folder / f"images/{i}.png")
        lines.append(json.dumps({"file_name": f"images/{i}.png", "label": label}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


# ------------------------------------------------------------------ F1: --out holding a run of another kind

@pytest.mark.parametrize("argv", [["eval", "--n", "4"], ["robust-eval", "--n", "4"], ["probe"]])
def test_an_evaluation_refuses_a_training_run_folder(tmp_path, capsys, argv):
    run = fake_run(tmp_path / "trained", "train")
    before = digest(run)
    err = run_user_error(capsys, [*argv, "--out", run])
    assert "holds a 'train' run" in err and "choose another folder" in err
    assert digest(run) == before


def test_an_evaluation_refuses_an_unfinished_training_run(tmp_path, capsys):
    run = tmp_path / "interrupted"
    (run / "state").mkdir(parents=True)
    err = run_user_error(capsys, ["eval", "--n", "4", "--out", run])
    assert "unfinished training run" in err and "state/" in err
    assert sorted(p.name for p in run.iterdir()) == ["state"]


def test_train_refuses_an_evaluation_folder(tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml", TINY_DPO)
    run = fake_run(tmp_path / "evaluated", "eval")
    before = digest(run)
    err = run_user_error(capsys, ["train", "--config", config, "--out", run])
    assert "holds a 'eval' run" in err
    assert digest(run) == before


@pytest.mark.parametrize("argv", [["pretrain-mini", "--config", "configs/pretrain_mini.yaml"],
                                  ["experiment", "typographic", "--quick"],
                                  ["transfer", "--encoder", "mini", "--into", "mini-vlm"],
                                  ["control", "--run", "RUN"]])
def test_other_commands_refuse_a_run_of_another_kind(tmp_path, capsys, argv):
    run = fake_run(tmp_path / "other", "robust-eval")
    before = digest(run)
    argv = [str(tmp_path / "head") if a == "RUN" else a for a in argv]
    err = run_user_error(capsys, [*argv, "--out", run])
    assert "holds a 'robust-eval' run" in err
    assert digest(run) == before


def test_re_running_eval_into_its_own_folder_says_it_replaces_the_results(tmp_path, capsys):
    out = tmp_path / "e"
    assert main(["eval", "--n", "4", "--out", str(out)]) == 0
    assert main(["eval", "--n", "4", "--seed", "1", "--out", str(out)]) == 0
    assert f"note: --out {out} already holds a 'eval' run; its results are replaced" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["seed"] == 1


# ------------------------------------------------------------------ F2: data export into an existing dataset

def test_data_export_refuses_a_folder_holding_a_dataset(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["data", "export", "--split", "clean", "--n", "6", "--out", str(out)]) == 0
    before = digest(out)
    err = run_user_error(capsys, ["data", "export", "--split", "typographic", "--n", "2", "--out", out])
    assert "already holds a dataset" in err and "metadata.jsonl" in err and "--overwrite" in err
    assert digest(out) == before
    for split in ("retrieval-test", "vqa"):
        run_user_error(capsys, ["data", "export", "--split", split, "--n", "2", "--out", out])
        assert digest(out) == before


def test_data_export_overwrite_replaces_the_whole_dataset(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["data", "export", "--split", "clean", "--n", "6", "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    assert main(["data", "export", "--split", "typographic", "--n", "2", "--overwrite", "--out", str(out)]) == 0
    assert len((out / "metadata.jsonl").read_text().splitlines()) == 2
    assert len(list((out / "images").iterdir())) == 2  # no stale images of the earlier export
    assert (out / "notes.txt").read_text() == "mine"  # only the dataset's own files are removed
    assert "removed the earlier dataset" in capsys.readouterr().err


def test_data_typographic_refuses_a_folder_holding_a_dataset(tmp_path, capsys):
    source = image_folder(tmp_path / "src", ["star", "heart"])
    out = image_folder(tmp_path / "out", ["moon"])
    before = digest(out)
    err = run_user_error(capsys, ["data", "typographic", "--data", source, "--out", out])
    assert "already holds a dataset" in err
    assert digest(out) == before


def test_data_export_refuses_a_run_folder_and_zero_images(tmp_path, capsys):
    run = fake_run(tmp_path / "r", "train")
    before = digest(run)
    assert "holds a 'train' run" in run_user_error(capsys, ["data", "export", "--split", "clean", "--n", "2",
                                                            "--out", run])
    assert digest(run) == before
    for split in ("clean", "retrieval", "vqa"):
        err = run_user_error(capsys, ["data", "export", "--split", split, "--n", "0", "--out", tmp_path / "x"])
        assert "--n must be >= 1" in err
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------ F3: control --t

@pytest.mark.parametrize("spec, expected", [
    ("nan", "expected finite values, got nan"), ("inf", "expected finite values, got inf"),
    ("0:inf:1", "expected finite values, got inf"), ("1e308", "must lie in [-100, 100]"),
    ("0:1e9:1e-9", "must lie in [-100, 100]"), ("0:10:1e-5", "gives 1,000,001 values; at most 1000"),
])
def test_control_t_must_be_finite_and_bounded(tmp_path, capsys, spec, expected):
    err = run_user_error(capsys, ["control", "--run", tmp_path / "head", "--t", spec, "--out", tmp_path / "c"])
    assert err.startswith("vlalign control: error: --t") and expected in err, err
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------ F4: seeds

@pytest.mark.parametrize("argv", [
    ["eval", "--seed", "-1"], ["data", "export", "--seed", "-1"], ["demo", "--seed", "-3"],
    ["experiment", "attribute", "--seed", "-1"], ["pretrain-mini", "--config", "c.yaml", "--seed", "-1"],
    ["probe", "--train-seed", str(2**63)], ["robust-eval", "--seed", "x"],
])
def test_seed_options_are_checked_when_parsed(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--out", str(tmp_path / "o")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    option = next(a for a in argv if a.endswith("seed"))
    assert f"error: argument {option}: " in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("section, value, field", [
    ("eval", -1, "eval.seed"), ("data", -1, "data.seed"), ("train", 10**20, "train.seed"),
])
def test_config_seeds_are_checked_before_training(tmp_path, capsys, section, value, field):
    config = {**TINY_DPO, section: {**TINY_DPO[section], "seed": value}}
    path = write_config(tmp_path / "bad.yaml", config)
    err = run_user_error(capsys, ["train", "--config", path, "--out", tmp_path / "o"])
    assert f"{path}: {field} must be an integer in [0, 2**63 - 1], got {value}" in err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ F5: prompt templates

@pytest.mark.parametrize("command", ["eval", "robust-eval"])
@pytest.mark.parametrize("template", ["a {} and {}", "a {} {x}", "a {} {!z}", "a {} {", "no slot"])
def test_template_option_needs_exactly_one_slot(tmp_path, capsys, command, template):
    err = run_user_error(capsys, [command, "--n", "4", "--template", template, "--out", tmp_path / "o"])
    assert err.startswith(f"vlalign {command}: error: --template must contain exactly one '{{}}'"), err
    assert not (tmp_path / "o").exists()


def test_config_templates_are_checked_before_training(tmp_path, capsys):
    config = {"method": "tecoa", "model": "mini", "options": {"attack_steps": 1, "templates": ["a {}", "a {} {}"]},
              "train": {"steps": 1, "batch_size": 2, "checkpoint_every": 1}, "data": {"images": 4},
              "eval": {"images": 4, "steps": 1}}
    path = write_config(tmp_path / "te.yaml", config)
    err = run_user_error(capsys, ["train", "--config", path, "--out", tmp_path / "o"])
    assert f"{path}: options: templates[1] must contain exactly one '{{}}'" in err  # refused as the config loads
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ F9: devices torch parses but vlalign can't use

@pytest.mark.parametrize("device", ["meta", "xla"])
def test_unusable_devices_are_refused(tmp_path, capsys, device):
    err = run_user_error(capsys, ["eval", "--n", "4", "--device", device, "--out", tmp_path / "o"])
    assert f"--device '{device}': not a device vlalign can compute on" in err


# ------------------------------------------------------------------ F10, F11: odd metadata

def test_non_utf8_metadata_names_the_file(tmp_path, capsys):
    folder = image_folder(tmp_path / "f", ["star", "heart"])
    (folder / "metadata.jsonl").write_bytes(b"\xff\xfe\x00")
    err = run_user_error(capsys, ["eval", "--data", folder, "--out", tmp_path / "o"])
    assert f"{folder / 'metadata.jsonl'}: not UTF-8 text (invalid start byte at byte 0)" in err


def test_an_empty_label_is_refused(tmp_path, capsys):
    folder = image_folder(tmp_path / "f", ["star", ""])
    err = run_user_error(capsys, ["eval", "--data", folder, "--out", tmp_path / "o"])
    assert f"{folder / 'metadata.jsonl'} line 2: \"label\" must be a non-empty class name" in err


# ------------------------------------------------------------------ F13: an embedded model of the other family

def test_an_embedded_model_of_the_wrong_family_says_so(tmp_path, capsys):
    err = run_user_error(capsys, ["eval", "--model", "mini-vlm", "--n", "4", "--out", tmp_path / "o"])
    assert "mini-vlm is an embedded generative VLM; this needs a contrastive" in err and "hub cache" not in err
    err = run_user_error(capsys, ["transfer", "--encoder", "mini", "--into", "mini", "--out", tmp_path / "t"])
    assert "mini is an embedded contrastive (CLIP-style) model; this needs a generative VLM" in err
    assert "hf download" not in err


# ------------------------------------------------------------------ F16: the unknown-words remedy

def test_eval_names_its_allow_unknown_words_option(tmp_path, capsys):
    folder = image_folder(tmp_path / "pets", ["dog", "cat"])
    err = run_user_error(capsys, ["eval", "--data", folder, "--out", tmp_path / "o"])
    assert err.endswith("or allow them with --allow-unknown-words")
