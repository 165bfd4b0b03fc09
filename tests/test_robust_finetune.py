"""TeCoA and FARE: configs, losses, a short run that writes a loadable model, exact resume, the experiment."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlalign.config import ConfigError, config_from_dict
from vlalign.models.loading import load_model, save_mini_clip
from vlalign.pipelines.robust import RobustRun
from vlalign.pipelines.train import load_training_config, run_training
from vlalign.training.methods.robust import fare_loss, tecoa_loss

from cli_helpers import interrupt_at

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _tiny_config(folder: Path, method: str, train: dict | None = None, eval: dict | None = None) -> RobustRun:
    values = {"method": method, "model": str(folder), "options": {"attack_steps": 2},
              "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 2, **(train or {})},
              "data": {"images": 32},
              "eval": {"images": 12, "steps": 2, "attacks": ["pgd"], "eps": ["4/255"], **(eval or {})}}
    return config_from_dict(RobustRun, values)


@pytest.fixture
def tiny_folder(tmp_path, tiny_mini_clip) -> Path:
    folder = tmp_path / "tiny"
    save_mini_clip(tiny_mini_clip, folder)
    return folder


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match=r"eval: eps must list at least one radius for the bounded attacks"):
        config_from_dict(RobustRun, {"method": "tecoa", "eval": {"eps": []}})
    assert config_from_dict(RobustRun, {"eval": {"eps": [], "attacks": ["typographic"]}}).eval.eps == []
    with pytest.raises(ConfigError, match=r"options: templates\[1\] must contain exactly one '\{\}'"):
        config_from_dict(RobustRun, {"method": "tecoa", "options": {"templates": ["a {}", "a {} {x}"]}})
    with pytest.raises(ConfigError, match="method: expected one of"):
        config_from_dict(RobustRun, {"method": "trades"})
    with pytest.raises(ConfigError, match="did you mean 4/255"):
        config_from_dict(RobustRun, {"method": "tecoa", "options": {"eps": "4"}})
    with pytest.raises(ConfigError, match="eval.seed must differ"):
        config_from_dict(RobustRun, {"method": "fare", "data": {"seed": 7}, "eval": {"seed": 7}})
    with pytest.raises(ConfigError, match="unknown attack"):
        config_from_dict(RobustRun, {"method": "fare", "eval": {"attacks": ["pgd", "cw"]}})
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict(RobustRun, {"method": "fare", "options": {"epsilon": "4/255"}})
    with pytest.raises(ConfigError, match="batch_size 64 exceeds data.images 10"):
        config_from_dict(RobustRun, {"method": "fare", "data": {"images": 10}})
    config = config_from_dict(RobustRun, {"method": "tecoa", "options": {"eps": "2/255"}})
    assert config.options.epsilon == pytest.approx(2 / 255) and config.options.step_size == pytest.approx(0.5 / 255)
    assert config.options.method == "tecoa"


@pytest.mark.parametrize("name", ["tecoa", "fare", "tecoa_eps2", "fare_eps2"])
def test_shipped_configs_load_through_the_trainer_registry(name):
    config = load_training_config(CONFIGS / f"{name}.yaml")
    assert isinstance(config, RobustRun)
    assert config.method == config.options.method == name.split("_")[0]
    assert config.options.attack_steps == 10
    assert config.options.epsilon == pytest.approx((2 if name.endswith("eps2") else 4) / 255)


@pytest.mark.parametrize("method", ["tecoa", "fare"])
def test_experiment_trains_what_the_config_file_says(method):
    from vlalign.experiments.robust import experiment_config

    assert load_training_config(CONFIGS / f"{method}.yaml") == experiment_config(method)


def test_losses_against_their_definitions():
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    labels = torch.tensor([0, 2, 1, 1, 0])
    logits = 50.0 * image.double() @ text.double().t()
    expected = (logits.logsumexp(1) - logits.gather(1, labels[:, None]).squeeze(1)).mean()
    assert tecoa_loss(image, text, labels, 50.0).item() == pytest.approx(expected.item(), rel=1e-5)
    a, b = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    expected = sum(((a[i] - b[i]) ** 2).sum() for i in range(4)) / 4
    assert fare_loss(a, b).item() == pytest.approx(expected.item(), rel=1e-5)
    assert fare_loss(a, a).item() == 0.0


@pytest.mark.parametrize("method", ["tecoa", "fare"])
def test_training_writes_a_loadable_model_and_metrics(tmp_path, tiny_folder, method):
    out = tmp_path / method
    metrics = run_training(_tiny_config(tiny_folder, method), out, progress=False).metrics
    assert set(metrics) >= {"clean", "worst_case", "robust", "warnings", "train"}
    assert set(metrics["worst_case"]) == {"4/255"}
    assert json.loads((out / "metrics.json").read_text())["method"] == method
    assert (out / "metrics.csv").is_file() and (out / "train_config.json").is_file()
    trained, original = load_model(out), load_model(tiny_folder)
    # Only the image tower moved; the text tower and the temperature are the original's.
    changed = {name for name, p in trained.state_dict().items() if not torch.equal(p, original.state_dict()[name])}
    assert changed and all(name.startswith("visual.") for name in changed)


@pytest.mark.parametrize("method", ["tecoa", "fare"])
def test_resumed_training_ends_where_an_uninterrupted_run_ends(tmp_path, tiny_folder, monkeypatch, method):
    config = _tiny_config(tiny_folder, method, {"steps": 4, "checkpoint_every": 2}, {"images": 4, "attacks": ["fgsm"]})
    run_training(config, tmp_path / "straight", progress=False)

    # Crash on the optimizer's 4th step: the checkpoint of step 2 is on disk, step 3's update is lost.
    original_step, calls = torch.optim.AdamW.step, {"n": 0}

    def crashing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", crashing_step)
    with pytest.raises(KeyboardInterrupt, match="the last checkpoint \\(step 2\\).* re-run the same command"):
        run_training(config, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(torch.optim.AdamW, "step", original_step)
    assert json.loads((tmp_path / "resumed" / "state" / "train_state.json").read_text())["step"] == 2
    run_training(config, tmp_path / "resumed", progress=False)
    a, b = load_model(tmp_path / "straight").state_dict(), load_model(tmp_path / "resumed").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_quick_experiment_writes_the_documented_shape(tmp_path):
    from vlalign.experiments.robust import run_robust_experiment

    # Two processes, as the full run uses on a 2-core CPU: the parallel path is the one that can break.
    metrics = run_robust_experiment(tmp_path, quick=True, workers=2)
    assert metrics["settings"]["workers"] == 2
    assert set(metrics["methods"]) == {"pretrained", "tecoa", "fare"}
    for values in metrics["methods"].values():
        assert 0 <= values["clean"] <= 1
        assert set(values["worst_case"]) == {"2/255", "4/255"}
    assert json.loads((tmp_path / "metrics.json").read_text())["methods"].keys() == metrics["methods"].keys()
    assert "TeCoA" in (tmp_path / "report.md").read_text()
    assert load_model(tmp_path / "tecoa").image_size == 64
    # The target is checked for each method (no "better method" picked on the reporting images).
    target = metrics["target"]
    assert set(target["met_by"]) == {"tecoa", "fare"} and target["met"] == all(target["met_by"].values())
    for name, met in target["met_by"].items():
        assert met == (metrics["methods"][name]["worst_case"]["4/255"] >= target["worst_case_at_least"])
        assert f"{name}: **{'met' if met else 'not met'}**" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("VLALIGN_SLOW") != "1", reason="about 15 minutes on 2 CPU cores; set VLALIGN_SLOW=1")
def test_full_experiment_meets_the_target(tmp_path):
    """The issue's target, checked for each method: TeCoA and FARE keep >= 30% worst-case accuracy at 4/255."""
    from vlalign.experiments.robust import run_robust_experiment

    metrics = run_robust_experiment(tmp_path)
    assert metrics["methods"]["pretrained"]["worst_case"]["4/255"] <= 0.1
    assert metrics["target"]["met"], metrics["methods"]


def test_a_run_folder_refuses_another_method_and_a_finished_run_is_reported(tmp_path, tiny_folder, capsys):
    from vlalign.cli import main
    from vlalign.training.loop import ConfigMismatchError

    out = tmp_path / "run"
    run_training(_tiny_config(tiny_folder, "tecoa", {"steps": 2}), out, progress=False)
    with pytest.raises(ConfigMismatchError, match=r"method: 'tecoa' -> 'fare'.*--overwrite"):
        run_training(_tiny_config(tiny_folder, "fare", {"steps": 2}), out, progress=False)
    assert run_training(_tiny_config(tiny_folder, "tecoa", {"steps": 2}), out, progress=False).already_finished
    config = tmp_path / "tecoa.yaml"
    import yaml

    config.write_text(yaml.safe_dump({"method": "tecoa", "model": str(tiny_folder), "options": {"attack_steps": 2},
                                      "train": {"steps": 2, "batch_size": 8, "checkpoint_every": 2},
                                      "data": {"images": 32},
                                      "eval": {"images": 12, "steps": 2, "attacks": ["pgd"], "eps": ["4/255"]}}))
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--out", str(out)]) == 0
    assert "this run already finished" in capsys.readouterr().out


def test_ctrl_c_in_training_is_one_line_that_says_how_to_resume(tmp_path, tiny_folder, capsys, monkeypatch):
    import yaml

    from vlalign.cli import main
    from vlalign.training.methods.robust import RobustFinetune

    config = tmp_path / "fare.yaml"
    config.write_text(yaml.safe_dump({"method": "fare", "model": str(tiny_folder), "options": {"attack_steps": 1},
                                      "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 2},
                                      "data": {"images": 32}}))
    interrupt_at(monkeypatch, RobustFinetune, 3)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vlalign train: interrupted at step 3; the last checkpoint (step 2)")
    assert err.endswith("re-run the same command to resume")


def test_changed_eval_settings_evaluate_a_finished_run_again_without_training(tmp_path, tiny_folder, monkeypatch,
                                                                              capsys):
    """One rule for every `vlalign train` pipeline: `eval` does not identify a run, so a finished run re-invoked
    with other eval settings is evaluated again with them, not trained again and not reported stale."""
    out = tmp_path / "run"
    run_training(_tiny_config(tiny_folder, "fare", {"steps": 2}), out, progress=False)
    model_bytes = (out / "model.safetensors").read_bytes()
    first_train = json.loads((out / "metrics.json").read_text())["train"]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(torch.optim.AdamW, "step", no_training)
    outcome = run_training(_tiny_config(tiny_folder, "fare", {"steps": 2}, {"eps": ["8/255"]}), out, progress=False)
    assert outcome.reevaluated and not outcome.already_finished
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["worst_case"]) == {"8/255"} and metrics["train"] == first_train
    assert json.loads((out / "train_config.json").read_text())["eval"]["eps"] == ["8/255"]
    assert (out / "model.safetensors").read_bytes() == model_bytes
    # Unchanged settings: only reported.
    again = run_training(_tiny_config(tiny_folder, "fare", {"steps": 2}, {"eps": ["8/255"]}), out, progress=False)
    assert again.already_finished


def test_extra_averages_are_saved_and_evaluated_beside_the_main_model(tmp_path, tiny_folder):
    out = tmp_path / "run"
    config = _tiny_config(tiny_folder, "tecoa", {"steps": 2, "averaging": "bma", "extra_averaging": ["ema"]})
    metrics = run_training(config, out, progress=False).metrics
    assert set(metrics["alternates"]) == {"ema"}
    alternate = metrics["alternates"]["ema"]
    assert set(alternate) >= {"clean", "worst_case", "robust"} and set(alternate["worst_case"]) == {"4/255"}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["alternates"]["ema"]["clean"] == alternate["clean"]
    assert json.loads((out / "ema" / "metrics.json").read_text())["averaging"] == "ema"
    main_model, ema = load_model(out), load_model(out / "ema")
    assert any(not torch.equal(v, ema.state_dict()[k]) for k, v in main_model.state_dict().items())


def test_an_explicit_options_method_that_contradicts_the_method_is_refused():
    with pytest.raises(ConfigError, match="options.method is 'fare' but method is 'tecoa'"):
        config_from_dict(RobustRun, {"method": "tecoa", "options": {"method": "fare"}})
    assert config_from_dict(RobustRun, {"method": "fare"}).options.method == "fare"
