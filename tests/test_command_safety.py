"""No command writes over its own input, and a bad --out or --device fails at once, in one line, before any work."""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from pathlib import Path

import pytest
import torch

import vlalign
from vlalign.cli import main

from vlalign.commands import common
from vlalign.commands.common import check_device, check_output
from vlalign.data.folder import export_image_set
from vlalign.data.mini_world import MiniWorld
from vlalign.models import loading
from vlalign.models.loading import save_model

from cli_helpers import digest, run_user_error


@pytest.fixture
def data_folder(tmp_path) -> Path:
    return export_image_set(MiniWorld().sample("clean", 6, seed=1), tmp_path / "data")


@pytest.fixture
def model_folder(tmp_path, tiny_mini_clip) -> Path:
    folder = tmp_path / "run"
    save_model(tiny_mini_clip, folder, info={"method": "test"})
    (folder / "metrics.json").write_text('{"from": "training"}\n')
    return folder


@pytest.fixture
def no_compute(monkeypatch):
    """Loading a model means the checks came too late: make it fail loudly."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output folder was checked")

    # Import every module first, then replace each binding of load_model: a module first imported while the patch
    # is active would otherwise keep `refuse` for the rest of the session and fail later, unrelated tests.
    for info in pkgutil.walk_packages(vlalign.__path__, "vlalign."):
        importlib.import_module(info.name)
    original = loading.load_model
    for module in [m for name, m in sys.modules.items() if name.startswith("vlalign")]:
        if getattr(module, "load_model", None) is original:
            monkeypatch.setattr(module, "load_model", refuse)


# --- data loss: --out equal to, inside or around an input folder ------------------------------------------------

def test_data_typographic_refuses_to_overwrite_its_input(capsys, data_folder):
    before = digest(data_folder)
    err = run_user_error(capsys, ["data", "typographic", "--data", data_folder, "--out", data_folder])
    assert f"--out {data_folder} is also the --data folder" in err
    err = run_user_error(capsys, ["data", "typographic", "--data", data_folder, "--out", data_folder / "attacked"])
    assert "lies inside the --data folder" in err
    err = run_user_error(capsys, ["data", "typographic", "--data", data_folder, "--out", data_folder.parent])
    assert "contains the --data folder" in err
    # Spelled differently (a trailing "/.", a detour through ".."), it is still the same folder.
    err = run_user_error(capsys, ["data", "typographic", "--data", data_folder,
                                  "--out", f"{data_folder}/../{data_folder.name}/."])
    assert "is also the --data folder" in err
    assert digest(data_folder) == before  # not one byte changed, nothing renamed or added


def test_a_symlink_to_the_input_is_the_input(capsys, data_folder, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(data_folder, target_is_directory=True)
    err = run_user_error(capsys, ["data", "typographic", "--data", data_folder, "--out", link])
    assert "is also the --data folder" in err


@pytest.mark.parametrize("command", [
    ["eval", "--model", "{model}", "--n", 4, "--out", "{model}"],
    ["eval", "--reference", "{model}", "--n", 4, "--out", "{model}"],
    ["eval", "--data", "{data}", "--out", "{data}"],
    ["eval", "--data", "{data}", "--out", "{data}/eval"],
    ["robust-eval", "--model", "{model}", "--n", 4, "--out", "{model}"],
    ["robust-eval", "--surrogate", "{model}", "--n", 4, "--out", "{model}"],
    ["robust-eval", "--data", "{data}", "--out", "{data}"],
    ["control", "--run", "{model}", "--out", "{model}"],
])
def test_every_command_with_an_input_refuses_to_write_over_it(capsys, command, data_folder, model_folder, no_compute):
    argv = [str(a).format(model=model_folder, data=data_folder) for a in command]
    before = digest(data_folder), digest(model_folder)
    err = run_user_error(capsys, argv)
    assert "folder" in err and ("is also the" in err or "inside the" in err), err
    assert (digest(data_folder), digest(model_folder)) == before


def test_an_output_folder_inside_a_model_folder_is_fine(model_folder):
    # `vlalign control` writes into RUN/control by default; a model folder is only read.
    assert check_output(model_folder / "control", [("--run", model_folder)], nested_ok=["--run"]) == \
        model_folder / "control"
    with pytest.raises(ValueError, match="lies inside the --data folder"):
        check_output(model_folder / "x", [("--data", model_folder)])


def test_names_that_are_not_folders_are_not_inputs(tmp_path):
    # "mini" and hub ids are not folders on disk: nothing to protect.
    assert check_output(tmp_path / "out", [("--model", "mini"), ("--model", "openai/clip-vit-base-patch32"),
                                           ("--data", None)]) == tmp_path / "out"


# --- --out that cannot be written: one line, before any compute -------------------------------------------------

@pytest.mark.parametrize("command", [
    ["eval", "--n", 4],
    ["robust-eval", "--n", 4],
    ["data", "export", "--n", 2],
    ["demo", "--fix-steps", 0],
    ["experiment", "attribute", "--quick"],
    ["pretrain-mini", "--config", "configs/pretrain_mini.yaml"],
    ["train", "--config", "configs/dpo_typographic.yaml"],
])
def test_an_out_that_is_a_file_fails_first(capsys, tmp_path, command, no_compute, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    err = run_user_error(capsys, [*command, "--out", blocker])
    assert err.endswith(f"--out {blocker}: is a file, expected a folder")
    err = run_user_error(capsys, [*command, "--out", blocker / "sub"])
    assert f"{blocker} is a file, so no folder can be created under it" in err
    assert blocker.read_text() == "not a folder"


def test_an_unwritable_out_fails_first(capsys, tmp_path, no_compute, monkeypatch):
    # As root, permissions do not stop a write, so simulate the filesystem refusing it.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(common.tempfile, "TemporaryFile", refuse)
    err = run_user_error(capsys, ["eval", "--n", 4, "--out", tmp_path / "o"])
    assert err.endswith(f"--out {tmp_path / 'o'}: cannot write in {tmp_path} (Permission denied)")
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_fails_first(capsys, tmp_path, no_compute):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        err = run_user_error(capsys, ["robust-eval", "--n", 4, "--out", locked / "o"])
    finally:
        locked.chmod(0o700)
    assert "cannot write in" in err and str(locked) in err


# --- --device ---------------------------------------------------------------------------------------------------

@pytest.fixture
def cpu_build(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)


@pytest.mark.parametrize("command", [
    ["eval", "--n", 4, "--out", "{tmp}/o"],
    ["robust-eval", "--n", 4, "--out", "{tmp}/o"],
    ["control", "--run", "{tmp}", "--out", "{tmp}/o"],
    ["pretrain-mini", "--config", "configs/pretrain_mini.yaml", "--out", "{tmp}/o"],
])
def test_device_cuda_on_a_cpu_build_is_one_line(capsys, tmp_path, command, cpu_build, no_compute, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    argv = [str(a).format(tmp=tmp_path) for a in command] + ["--device", "cuda"]
    err = run_user_error(capsys, argv)
    assert err.endswith("--device cuda: this PyTorch build has no CUDA support (a CPU-only wheel); use --device cpu")


def test_device_checks(cpu_build, monkeypatch):
    check_device("cpu")
    check_device(None)
    with pytest.raises(ValueError, match="'gpu': not a torch device; expected cpu, cuda, cuda:N or mps"):
        check_device("gpu")
    monkeypatch.setattr(torch.version, "cuda", "12.4")  # a CUDA build on a machine without a GPU
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        check_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_device("cuda:0")
    with pytest.raises(ValueError, match=r"cuda:3: only 1 CUDA device\(s\) visible"):
        check_device("cuda:3")


def test_a_config_with_a_duplicate_key_is_one_line(capsys, tmp_path):
    config = tmp_path / "pretrain.yaml"
    config.write_text("seed: 2\ntrain:\n  steps: 2\n  batch_size: 8\n  steps: 3\n")
    err = run_user_error(capsys, ["pretrain-mini", "--config", config, "--out", tmp_path / "o"])
    assert err.endswith(f"{config}: duplicate key 'steps' at line 5 (first given at line 3); remove one of them")


def test_train_refuses_to_write_into_its_data_folder(capsys, tmp_path, data_folder, no_compute):
    config = tmp_path / "dpo.yaml"
    config.write_text(f"method: dpo\ndata:\n  path: {data_folder}\ntrain:\n  steps: 1\n")
    before = digest(data_folder)
    err = run_user_error(capsys, ["train", "--config", config, "--out", data_folder])
    assert f"is also the {config}: data.path folder" in err
    assert digest(data_folder) == before


def test_train_with_device_cuda_on_a_cpu_build(capsys, tmp_path, cpu_build, no_compute):
    config = tmp_path / "dpo.yaml"
    config.write_text("method: dpo\ntrain:\n  device: cuda\n  steps: 1\n")
    err = run_user_error(capsys, ["train", "--config", config, "--out", tmp_path / "o"])
    assert err.endswith(f"{config}: train.device cuda: this PyTorch build has no CUDA support (a CPU-only wheel); "
                        "set it to cpu")


def test_data_typographic_keeps_the_file_names(tmp_path):
    import json

    from PIL import Image

    source = tmp_path / "photos"
    (source / "cats").mkdir(parents=True)
    (source / "dogs").mkdir()
    records = [("cats/tabby.jpg", "star"), ("dogs/rex.JPG", "heart"), ("cats/ginger.png", "moon")]
    for name, _ in records:
        Image.new("RGB", (96, 80), (120, 80, 40)).save(source / name, format="PNG" if name.endswith("png") else "JPEG")
    (source / "metadata.jsonl").write_text("".join(json.dumps({"file_name": n, "label": c}) + "\n" for n, c in records))
    assert main(["data", "typographic", "--data", str(source), "--out", str(tmp_path / "attacked")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "attacked" / "metadata.jsonl").read_text().splitlines()]
    assert [line["file_name"] for line in lines] == ["cats/tabby.png", "dogs/rex.png", "cats/ginger.png"]
    assert all((tmp_path / "attacked" / line["file_name"]).is_file() for line in lines)
    assert all(line["written"] != line["label"] for line in lines)
