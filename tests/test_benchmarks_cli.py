"""The benchmark tools' command lines and what they write: the runner (``python -m benchmarks``) never replaces a
measurement with a smoke run or a skipped row, writes atomically and refuses bad options by name; the standalone
tools (``adpo_variant``, ``advlora_variant``, ``adpo_compare``, ``bench_adpo``, ``word_coverage``,
``rank_profile``) check their input before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from benchmarks.common import Row, Settings

ROOT = Path(__file__).resolve().parents[1]


def _row(skipped: str = "", **changes) -> Row:
    row = Row("fake", "variant vs baseline", "variant", "baseline", "model", 4, 1, "cpu", "ms per step", 2.0, 1.0,
              2.0, (1.5, 2.5), 2, peak_mib={"variant": 10.0, "baseline": 9.0},
              growth_mib={"variant": 1.0, "baseline": 0.0}, skipped=skipped)
    for key, value in changes.items():
        setattr(row, key, value)
    return row


@pytest.fixture
def runner(monkeypatch, tmp_path):
    """The runner with one fake benchmark (``fake``; its rows are ``runner.rows``), its results folder under
    ``tmp_path/results`` and its temporary folders under ``tmp_path/tmp``."""
    import benchmarks.__main__ as runner

    calls = []

    def fake(settings: Settings) -> list[Row]:
        calls.append(settings)
        return runner.rows

    monkeypatch.setattr(runner, "_registry", lambda: {"fake": (fake, "a fake benchmark")})
    monkeypatch.setattr(runner, "RESULTS", tmp_path / "results", raising=False)  # raising: older runners
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    runner.rows, runner.calls = [_row()], calls
    return runner


# --------------------------------------------------------------------------------------------- the runner


def test_quick_run_never_writes_into_the_measured_results(runner, tmp_path, capsys):
    assert runner.main(["--quick", "--only", "fake"]) == 0
    assert not (tmp_path / "results").exists()
    (written,) = (tmp_path / "tmp").glob("vlalign-bench-quick-*/fake.json")
    assert json.loads(written.read_text())["environment"]["quick"] is True
    assert f"results written to {written.parent} (quick smoke run, not a measurement)" in capsys.readouterr().out
    for out in (tmp_path / "results", tmp_path / "results" / "quiet"):
        with pytest.raises(SystemExit) as exit:
            runner.main(["--quick", "--only", "fake", "--out", str(out)])
        assert exit.value.code == 2
        assert "--quick run is a smoke test, not a measurement" in capsys.readouterr().err
    assert not (tmp_path / "results").exists() and len(runner.calls) == 1
    runner.main(["--only", "fake"])  # a measurement goes to benchmarks/results
    assert json.loads((tmp_path / "results" / "fake.json").read_text())["environment"]["quick"] is False


def test_show_marks_a_quick_result(runner, tmp_path, capsys):
    runner.main(["--quick", "--only", "fake", "--out", str(tmp_path / "smoke")])
    capsys.readouterr()
    runner.main(["--show", "--out", str(tmp_path / "smoke")])
    assert "### fake: a fake benchmark (quick smoke run, not a measurement)" in capsys.readouterr().out
    runner.main(["--show", "--brief", "--out", str(tmp_path / "smoke")])
    assert "fake (quick smoke run, not a measurement)" in capsys.readouterr().out
    runner.main(["--only", "fake", "--out", str(tmp_path / "measured")])
    capsys.readouterr()
    runner.main(["--show", "--out", str(tmp_path / "measured")])
    assert "quick smoke run" not in capsys.readouterr().out


def test_skipped_rows_never_replace_measured_ones(runner, tmp_path, capsys):
    out = tmp_path / "results"
    runner.main(["--only", "fake"])
    measured = (out / "fake.json").read_text()
    runner.rows = [_row(skipped="torchattacks is not installed")]
    runner.main(["--only", "fake"])
    assert (out / "fake.json").read_text() == measured
    assert json.loads((out / "fake.skipped.json").read_text())["rows"][0]["skipped"]
    assert f"kept the measured {out / 'fake.json'}" in capsys.readouterr().out
    runner.main(["--show"])
    shown = capsys.readouterr().out
    assert shown.count("### fake") == 1 and "skipped: torchattacks" not in shown
    runner.main(["--only", "fake", "--out", str(tmp_path / "fresh")])  # nothing measured to keep: written as usual
    assert json.loads((tmp_path / "fresh" / "fake.json").read_text())["rows"][0]["skipped"]


def test_brief_without_show_is_refused_before_any_run(runner, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        runner.main(["--brief"])
    assert exit.value.code == 2 and "--brief only applies with --show" in capsys.readouterr().err
    assert runner.calls == [] and not (tmp_path / "results").exists()


@pytest.mark.parametrize("argv, message", [
    (["--threads", "0"], "--threads: expected a number of threads >= 1, got 0"),
    (["--repeats", "0"], "--repeats: expected a number of rounds >= 1, got 0"),
    (["--repeats", "-1"], "--repeats: expected a number of rounds >= 1, got -1"),
    (["--peak-tflops", "0"], "--peak-tflops: expected a positive number of TFLOP/s, got 0.0"),
    (["--peak-tflops", "-5"], "--peak-tflops: expected a positive number of TFLOP/s, got -5.0"),
    (["--peak-tflops", "nan"], "--peak-tflops: expected a positive number of TFLOP/s, got nan"),
    (["--device", "tpu"], "--device: expected cpu or cuda (e.g. cuda:0), got 'tpu'"),
    (["--device", "meta"], "--device: expected cpu or cuda (e.g. cuda:0), got 'meta'"),
    (["--show", "--only", "nope"], "--only: unknown benchmark(s) ['nope']"),
    (["--show", "--out", "/nonexistent"], "--out /nonexistent: expected a folder of saved results"),
])
def test_bad_runner_options_are_named_before_any_run(runner, capsys, argv, message):
    with pytest.raises(SystemExit) as exit:
        runner.main(["--only", "fake", *argv] if "--show" not in argv else argv)
    assert exit.value.code == 2 and message in capsys.readouterr().err
    assert runner.calls == []


def test_repeats_given_is_repeats_used(runner):
    runner.main(["--only", "fake", "--repeats", "1", "--quick"])
    assert runner.calls[-1].repeats == 1


def test_a_failed_write_keeps_the_previous_result(tmp_path):
    """A full disk (a file-size limit here) while writing a result leaves the saved file as it was."""
    saved = {"benchmark": "fake", "rows": []}
    (tmp_path / "fake.json").write_text(json.dumps(saved))
    script = f"""
import resource, signal
from pathlib import Path
import benchmarks.__main__ as runner
from benchmarks.common import Row, Settings
row = Row("fake", "x" * 4000, "a", "b", "m", 1, 1, "cpu", "ms", 1.0, 1.0, 1.0)
runner._registry = lambda: {{"fake": (lambda settings: [row], "fake")}}
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
try:
    runner.run_benchmark("fake", Settings(), Path({str(tmp_path)!r}), "cmd")
except OSError as error:
    print("write failed:", error)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert "write failed" in done.stdout, done.stderr[-2000:]
    assert json.loads((tmp_path / "fake.json").read_text()) == saved


def test_growth_not_measured_is_not_shown_as_zero():
    from benchmarks.__main__ import format_rows

    table = format_rows([_row(growth_mib={}), _row(growth_mib={"variant": 3.0})])
    assert "10 (+-), 9 (+-)" in table and "10 (+3), 9 (+-)" in table and "(+0)" not in table


def test_rows_of_cpu_only_benchmarks_say_cpu_whatever_the_device():
    from benchmarks.bench_eval import run_retrieval

    (row,) = run_retrieval(Settings(quick=True, device="cuda", repeats=1))
    assert row.device == "cpu"


def test_po_row_met_is_unknown_when_its_mfu_is():
    from benchmarks.bench_gpu import po_target_met

    assert po_target_met(1.0, None, quick=False) is None  # ratio met, MFU unknown (no peak for this GPU)
    assert po_target_met(1.2, None, quick=False) is False  # ratio missed: not met whatever the MFU
    assert po_target_met(1.0, 0.40, quick=False) is True and po_target_met(1.0, 0.30, quick=False) is False
    assert po_target_met(1.0, None, quick=True) is True  # --quick checks the ratio only


def test_bare_loop_trains_with_the_methods_defaults(monkeypatch):
    """The bare loop reads the method's learning rate and fit's warm-up from the library, so a changed default
    changes both sides of the ``loop`` row."""
    import benchmarks.bench_engine as engine
    import vlalign.training.methods.preference as preference
    from vlalign.training.train_config import TrainConfig

    monkeypatch.setitem(preference.DEFAULT_LR, "full", 3e-4)
    seen = {}
    adamax, schedule = torch.optim.Adamax, engine.warmup_cosine

    def recording_adamax(params, **kwargs):
        seen["lr"] = kwargs["lr"]
        return adamax(params, **kwargs)

    def recording_schedule(optimizer, steps, warmup):
        seen["schedule"] = (steps, warmup)
        return schedule(optimizer, steps, warmup)

    monkeypatch.setattr(torch.optim, "Adamax", recording_adamax)
    monkeypatch.setattr(engine, "warmup_cosine", recording_schedule)
    assert engine.bare_seconds_per_step(4, 1) > 0
    assert seen == {"lr": 3e-4, "schedule": (3, TrainConfig().warmup_fraction)}


# --------------------------------------------------------------------------------------------- bench_adpo


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps: expected a whole number >= 1, got 0"),
    (["--batch", "0"], "--batch: expected a whole number >= 1, got 0"),
    (["--threads", "0"], "--threads: expected a whole number >= 1, got 0"),
    (["--steps", "1", "--batch", "16", "--images", "8"], "--images: expected at least one batch (--batch 16)"),
])
def test_bench_adpo_checks_its_options_before_any_work(monkeypatch, capsys, argv, message):
    from benchmarks import bench_adpo

    monkeypatch.setattr(bench_adpo, "build_methods", lambda *args: pytest.fail("built the methods"))
    with pytest.raises(SystemExit) as exit:
        bench_adpo.main(argv)
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_bench_adpo_builds_its_vlm_from_any_folder(monkeypatch, tmp_path):
    from benchmarks.bench_adpo import build_vlm

    monkeypatch.chdir(tmp_path)
    clip, vlm = build_vlm(None)
    assert vlm.vision is not None and clip.image_size == 64


def test_timed_fit_leaves_out_what_prepare_costs(monkeypatch, tiny_mini_clip):
    """FARE's ``prepare`` recomputes its reference embeddings inside every ``fit``: the step timing must not pay it."""
    from benchmarks.bench_adpo import timed_fit
    from vlalign.data.datasets import TensorImageDataset
    from vlalign.training.methods.robust import RobustConfig, RobustFinetune
    from vlalign.training.train_config import TrainConfig

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=generator)
    data = TensorImageDataset(images, label=torch.randint(0, 2, (8,), generator=generator))
    fare = RobustFinetune(tiny_mini_clip, data, ("circle", "square"), RobustConfig(method="fare", eps="4/255",
                                                                                     attack_steps=1))
    prepare = RobustFinetune.prepare

    def slow_prepare(self, device):
        time.sleep(1.5)
        prepare(self, device)

    monkeypatch.setattr(RobustFinetune, "prepare", slow_prepare)
    seconds = timed_fit(fare, TrainConfig(steps=2, batch_size=4, lr=1e-4, log_every=2))
    assert 0 < seconds < 0.5


# --------------------------------------------------------------------------------------------- the variant tools


def test_adpo_variant_names_a_bad_field_or_setting_before_training(monkeypatch, tmp_path, capsys):
    from benchmarks import adpo_variant
    from vlalign.experiments import adpo

    monkeypatch.setattr(adpo, "run_row", lambda *args, **kwargs: pytest.fail("trained a row"))
    for argv, message in ((["adpo_dpo", '{"nope": 1}'], "fields: unknown key(s) nope"),
                          (["adpo_dpo", '{"la_weight": "x"}'], "la_weight"),
                          (["adpo_dpo", "{}", "--eval", '{"questions": -1}'],
                           "eval.questions: expected a whole number >= 0, got -1"),
                          (["adpo_dpo", "{}", "--settings", '{"data": 5}'], "data: expected a JSON object"),
                          (["adpo_dpo", "{}", "--settings", '{"lr": {"adpo": 0}}'],
                           "lr.adpo: expected a finite number > 0"),
                          (["adpo_dpo", "{}", "--settings", '{"train": {"steps": 0}}'], "steps"),
                          (["adpo_dpo", "{}", "--settings", '{"eps": 4}'], "eps: expected a string"),
                          (["fare", "{}", "--settings", '{"attack_steps": "x"}'], "attack_steps"),
                          (["adpo_dpo", "{}", "--check", "-1"], "--check: expected question seeds >= 0")):
        monkeypatch.setattr("sys.argv", ["adpo_variant", argv[0], argv[1], str(tmp_path), *argv[2:]])
        with pytest.raises(SystemExit) as exit:
            adpo_variant.main()
        assert exit.value.code == 2 and message in capsys.readouterr().err, argv
    assert not any(tmp_path.iterdir())


def test_advlora_variant_names_a_malformed_block_and_refuses_a_train_seed(monkeypatch, tmp_path, capsys):
    from benchmarks import advlora_variant

    for settings, message in (('{"train": 5}', "settings.train: expected a JSON object"),
                              ('{"lr": "x"}', "settings.lr: expected a JSON object"),
                              ('{"train": {"seed": 3}}', "settings.train.seed: the loop seed is --seed")):
        monkeypatch.setattr("sys.argv", ["advlora_variant", "advlora", settings, str(tmp_path)])
        with pytest.raises(SystemExit) as exit:
            advlora_variant.main()
        assert exit.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(ValueError, match="pass --seed instead"):
        advlora_variant.variant_config({"train": {"seed": 3}}, seed=0)


def test_adpo_compare_pairs_only_the_same_questions(tmp_path, capsys):
    from benchmarks import adpo_compare

    def write(name, data):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(json.dumps(data))
        return str(tmp_path / name)

    scores = {"clean_scores": [1, 0, 1, 1], "robust_scores": [1, 0, 0, 1]}
    a, b = write("a/check_4344.json", scores), write("b/check_4345.json", scores)  # seeds from the names
    with pytest.raises(SystemExit, match="seeds 4344 and 4345"):
        adpo_compare.main([a, b])
    recorded = write("c/check.json", {**scores, "question_seed": 4345})  # recorded by adpo_variant
    with pytest.raises(SystemExit, match="seeds 4344 and 4345"):
        adpo_compare.main([a, recorded])
    (tmp_path / "metrics.json").write_text(json.dumps({"confirm": {"fare": scores},
                                                       "settings": {"confirm": {"questions": 4, "seed": 4345}}}))
    with pytest.raises(SystemExit, match="seeds 4344 and 4345"):
        adpo_compare.main([a, f"{tmp_path / 'metrics.json'}:fare"])
    adpo_compare.main([b, recorded])  # the same questions: one pair, no spread over seeds to give
    out = capsys.readouterr().out
    assert "mean over 1: APGD 4/255 +0.00 ± n/a (one pair) pt" in out and "± 0.00 pt" not in out
    empty = write("d/check_1.json", {"clean_scores": [], "robust_scores": []})
    with pytest.raises(SystemExit, match="at least one"):
        adpo_compare.main([empty, empty])


def test_adpo_variant_records_the_question_seed_of_each_check(monkeypatch, tmp_path):
    from benchmarks import adpo_variant
    from vlalign.experiments import adpo

    scores = {"clean": 0.5, "robust": {"2/255": 0.4, "4/255": 0.3}, "targeted_success": {"4/255": 0.1},
              "cider": 1.0, "step_seconds": 2.0}
    monkeypatch.setattr(adpo, "run_row", lambda row, settings, seed, out, fields=None: {"methods": scores})
    monkeypatch.setattr(adpo, "confirm_row", lambda row, settings, seed, out: {
        "clean": 0.5, "robust": {"4/255": 0.5}, "n": 2, "clean_scores": [1, 0], "robust_scores": [1, 0],
        "warnings": []})
    monkeypatch.setattr("sys.argv", ["adpo_variant", "adpo_dpo", "{}", str(tmp_path), "--check", "4345"])
    adpo_variant.main()
    assert json.loads((tmp_path / "check_4345.json").read_text())["question_seed"] == 4345


def test_word_coverage_refuses_no_images(capsys):
    from benchmarks import word_coverage

    for argv, message in ((["--n", "0"], "--n: expected a number of images >= 1, got 0"),
                          (["--n", "-3"], "--n: expected a number of images >= 1, got -3"),
                          (["--seed", "-1"], "--seed: expected a seed >= 0, got -1")):
        with pytest.raises(SystemExit) as exit:
            word_coverage.main(argv)
        assert exit.value.code == 2 and message in capsys.readouterr().err


def test_rank_profile_refuses_a_prefix_that_matches_nothing(tmp_path, capsys, tiny_mini_clip):
    import copy

    from benchmarks import rank_profile
    from vlalign.models.loading import save_model

    tuned = copy.deepcopy(tiny_mini_clip)
    with torch.no_grad():
        tuned.visual.stem[3].weight.mul_(1.5)
    save_model(tiny_mini_clip, tmp_path / "base")
    save_model(tuned, tmp_path / "tuned")
    with pytest.raises(SystemExit) as exit:
        rank_profile.main([str(tmp_path / "base"), str(tmp_path / "tuned"), "--prefix", "nope.",
                           "--out", str(tmp_path / "profile.json")])
    error = capsys.readouterr().err
    assert exit.value.code == 2 and "--prefix 'nope.': no parameter of" in error and "visual." in error
    assert not (tmp_path / "profile.json").exists()
