"""Command-line checks made before any work: pretrain-vlm's and transfer's --out and devices, a train config's
image root and data file, and the range of the count options; each a one-line error naming the option."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cli_helpers import digest, run_user_error


@pytest.fixture
def no_work(monkeypatch):
    """Any training, loading or writing means the checks came too late."""
    def refuse(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    import vlalign.models.vlm_loading as vlm_loading
    import vlalign.pipelines.pretrain_vlm as pretrain_vlm
    import vlalign.pipelines.train as train

    monkeypatch.setattr(pretrain_vlm, "pretrain_vlm", refuse)
    monkeypatch.setattr(vlm_loading, "load_vlm", refuse)
    monkeypatch.setattr(train, "run_training", refuse)


@pytest.fixture
def cpu_build(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)


@pytest.fixture
def model_folder(tmp_path) -> Path:
    folder = tmp_path / "vlm"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "metrics.json").write_text("{}")
    return folder


# --- pretrain-vlm -------------------------------------------------------------------------------------------------

def test_pretrain_vlm_checks_out_and_devices_first(capsys, tmp_path, no_work, cpu_build):
    config = tmp_path / "pv.yaml"
    config.write_text("full: {steps: 2}\n")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    err = run_user_error(capsys, ["pretrain-vlm", "--config", config, "--out", blocker])
    assert err.endswith(f"--out {blocker}: is a file, expected a folder")
    err = run_user_error(capsys, ["pretrain-vlm", "--config", config, "--out", tmp_path / "o", "--device", "bogus"])
    assert "--device 'bogus': not a torch device" in err
    err = run_user_error(capsys, ["pretrain-vlm", "--config", config, "--out", tmp_path / "o", "--device", "cuda"])
    assert err.endswith("--device cuda: this PyTorch build has no CUDA support (a CPU-only wheel); use --device cpu")
    config.write_text("projector: {device: gpu}\n")
    err = run_user_error(capsys, ["pretrain-vlm", "--config", config, "--out", tmp_path / "o"])
    assert f"{config}: projector.device 'gpu': not a torch device" in err
    config.write_text("full: {device: cuda}\n")
    err = run_user_error(capsys, ["pretrain-vlm", "--config", config, "--out", tmp_path / "o"])
    assert f"{config}: full.device cuda: this PyTorch build has no CUDA support" in err
    assert not (tmp_path / "o").exists()


def test_pretrain_vlm_refuses_to_write_into_its_tower(capsys, tmp_path, model_folder, no_work):
    config = tmp_path / "pv.yaml"
    config.write_text(f"tower: {model_folder}\n")
    before = digest(model_folder)
    err = run_user_error(capsys, ["pretrain-vlm", "--config", config, "--out", model_folder])
    assert f"is also the {config}: tower folder" in err
    err = run_user_error(capsys, ["pretrain-vlm", "--config", config, "--tower", model_folder, "--out", model_folder])
    assert "is also the --tower folder" in err
    assert digest(model_folder) == before


# --- transfer -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("option", ["--into", "--encoder"])
def test_transfer_never_writes_over_its_inputs(capsys, tmp_path, model_folder, no_work, option):
    other = "mini-vlm" if option == "--encoder" else "mini"
    argv = ["transfer", option, model_folder, "--into" if option == "--encoder" else "--encoder", other,
            "--out", model_folder]
    before = digest(model_folder)
    err = run_user_error(capsys, argv)
    assert f"--out {model_folder} is also the {option} folder" in err
    argv[-1] = tmp_path  # a folder holding the input
    assert f"contains the {option} folder" in run_user_error(capsys, argv)
    assert digest(model_folder) == before


def test_transfer_into_a_file_is_one_line(capsys, tmp_path, no_work):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    err = run_user_error(capsys, ["transfer", "--encoder", "mini", "--into", "mini-vlm", "--out", blocker])
    assert err.endswith(f"--out {blocker}: is a file, expected a folder")


# --- train: a Karpathy JSON and its image root --------------------------------------------------------------------

def test_train_refuses_its_image_root_and_a_folder_holding_its_data_file(capsys, tmp_path, no_work):
    data = tmp_path / "coco"
    (data / "imgs").mkdir(parents=True)
    (data / "dataset.json").write_text('{"images": []}')
    config = tmp_path / "kar.yaml"
    config.write_text(f"method: advlora\ndata: {{path: {data / 'dataset.json'}, image_root: {data / 'imgs'}}}\n"
                      "eval: {images: 0}\n")
    before = digest(data)
    err = run_user_error(capsys, ["train", "--config", config, "--out", data / "imgs"])
    assert f"is also the {config}: data.image_root folder" in err
    err = run_user_error(capsys, ["train", "--config", config, "--out", data / "imgs" / "run"])
    assert f"lies inside the {config}: data.image_root folder" in err
    err = run_user_error(capsys, ["train", "--config", config, "--out", data])
    assert f"contains the {config}: data.path file {data / 'dataset.json'}" in err
    assert digest(data) == before


def test_a_preference_jsonl_in_the_working_folder_leaves_an_output_folder_beside_it_alone(tmp_path):
    from vlalign.commands.common import check_output

    jsonl = tmp_path / "prefs.jsonl"
    jsonl.write_text("")
    assert check_output(tmp_path / "runs" / "dpo", [("data.path", jsonl)]) == tmp_path / "runs" / "dpo"
    with pytest.raises(ValueError, match="contains the data.path file"):
        check_output(tmp_path, [("data.path", jsonl)])


# --- count options ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["eval", "--n", 0], "--n must be >= 1 (images of the generated split), got 0"),
    (["demo", "--n", 0], "--n must be >= 1 (test images per split), got 0"),
    (["demo", "--fix-steps", -1], "--fix-steps must be >= 0 (0 skips the fix), got -1"),
    (["control", "--run", "{tmp}", "--n", 0], "--n must be >= 1 (test images per split), got 0"),
])
def test_count_options_are_range_checked_naming_the_option(capsys, tmp_path, argv, message):
    out = tmp_path / "o"
    err = run_user_error(capsys, [str(a).format(tmp=tmp_path) for a in argv] + ["--out", out])
    assert err.endswith(message)
    assert not out.exists()  # nothing left behind
