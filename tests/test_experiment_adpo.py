"""``vlalign experiment adpo --quick`` end to end on tiny models built from configs (no shipped asset), the
metrics.json shape of the issue, the report and its rebuild, and the full run's settings."""

from __future__ import annotations

import json

import pytest
import torch

from vlalign.cli import main
from vlalign.experiments import adpo, adpo_targets
from vlalign.training.methods.adpo import AdPOConfig
from vlalign.training.train_config import TrainConfig

ROW_KEYS = {"clean", "cider", "robust", "targeted_success", "step_seconds"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("adpo") / "run"
    assert main(["experiment", "adpo", "--quick", "--out", str(out)]) == 0
    return out


def test_quick_run_writes_the_issues_metrics_shape(quick_run):
    metrics = json.loads((quick_run / "metrics.json").read_text())
    assert list(metrics["methods"]) == list(adpo.ROWS) and list(metrics["transfer"]) == list(adpo.ROWS)
    for table in ("methods", "transfer"):
        for row, values in metrics[table].items():
            assert ROW_KEYS <= set(values), (table, row)
            assert set(values["robust"]) == {"2/255", "4/255"} and set(values["targeted_success"]) == {"4/255"}
            fractions = [values["clean"], *values["robust"].values(), *values["targeted_success"].values()]
            assert all(0.0 <= v <= 1.0 for v in fractions)
            # the worst case over clean and attacked cannot beat the attacked questions' clean accuracy
            assert values["robust"]["4/255"] <= values["attacked_clean"] + 1e-9
            assert (values["step_seconds"] is None) == (row == "original")
    assert metrics["methods"]["adpo_dpo"]["precompute_seconds"] > 0
    assert metrics["methods"]["adpo_ipo"]["precompute_seconds"] is None  # the pairs are shared, computed once
    assert metrics["targets"]["best_adpo"] in adpo.ADPO_ROWS
    assert metrics["settings"]["quick"] is True


def test_quick_run_confirms_the_target_on_fresh_questions_from_the_saved_encoders(quick_run):
    metrics = json.loads((quick_run / "metrics.json").read_text())
    best, confirm = metrics["targets"]["best_adpo"], metrics["confirm"]
    assert list(confirm) == [best, "fare"] and metrics["targets"]["decided_on"] == "confirmation"
    for row, values in confirm.items():
        assert (quick_run / "runs" / row / adpo.ENCODER_FILE).is_file()
        n = values["n"]
        assert n == adpo.QUICK["confirm"]["questions"] == len(values["clean_scores"]) == len(values["robust_scores"])
        assert values["clean"] == sum(values["clean_scores"]) / n
        assert values["robust"]["4/255"] == sum(values["robust_scores"]) / n
        assert all(r <= c for r, c in zip(values["robust_scores"], values["clean_scores"]))
    differences = [a - b for a, b in zip(confirm[best]["robust_scores"], confirm["fare"]["robust_scores"])]
    assert abs(metrics["targets"]["robust_vs_fare"] - sum(differences) / len(differences)) < 1e-12
    assert "## The target check" in (quick_run / "report.md").read_text()


def test_quick_run_picks_the_best_adpo_row_on_the_validation_questions(quick_run):
    """Every AdPO row is scored on the validation questions as the check scores; the highest APGD 4/255 accuracy
    (ties: clean) is the best row, the one the check confirms, whatever the table says."""
    metrics = json.loads((quick_run / "metrics.json").read_text())
    selection = metrics["selection"]
    assert selection["on"] == "validation" and metrics["targets"]["selected_on"] == "validation"
    assert (selection["questions"], selection["seed"]) == (adpo.QUICK["select"]["questions"],
                                                           adpo.QUICK["select"]["seed"])
    assert selection["seed"] not in (adpo.QUICK["confirm"]["seed"], adpo.QUICK["eval"]["seed"])
    scores = selection["scores"]
    assert list(scores) == [r for r in adpo.ADPO_ROWS if r in adpo.ROWS]
    best = max(scores, key=lambda r: (scores[r]["robust"], scores[r]["clean"]))
    assert selection["best"] == best == metrics["targets"]["best_adpo"] == list(metrics["confirm"])[0]
    # a row's validation score is confirm_row on the validation questions, re-computed here from its saved encoder
    settings = adpo.merged_settings(metrics["settings"], {"confirm": adpo.QUICK["select"]})
    again = adpo.confirm_row(best, {k: settings[k] for k in adpo.QUICK}, 0, quick_run)
    assert (again["clean"], again["robust"]["4/255"]) == (scores[best]["clean"], scores[best]["robust"])
    assert "validation questions" in (quick_run / "report.md").read_text()


def test_the_targets_follow_the_selected_row_not_the_table(tmp_path):
    row = lambda clean, robust: {"clean": clean, "robust": {"4/255": robust}, "step_seconds": 1.0}  # noqa: E731
    methods = {"original": row(0.9, 0.05), "fare": row(0.8, 0.30), "adpo_dpo": row(0.85, 0.40),
               "adpo_kto": row(0.85, 0.30)}
    targets = adpo_targets.targets(methods, {}, 10, "adpo_kto", selected_on="validation")
    assert targets["best_adpo"] == "adpo_kto" and targets["selected_on"] == "validation"
    # no check in this run: decided on the table, for the selected row
    assert targets["decided_on"] == "table" and abs(targets["robust_vs_fare"]) < 1e-12
    assert abs(targets["clean_vs_fare"] - 0.05) < 1e-12
    # a tie in robust accuracy goes to the cleaner row
    tied = {"adpo_dpo": (0.5, 0.80), "adpo_kto": (0.5, 0.85), "adpo_ipo": (0.4, 0.99)}
    assert adpo_targets.most_robust(tied) == "adpo_kto"
    with pytest.raises(ValueError, match="select.seed 4344 is also confirm.seed"):
        adpo.run_adpo_experiment(tmp_path / "run", quick=True, overrides={"select": {"seed": 4344}})
    assert not (tmp_path / "run").exists()  # refused before anything is written
    # without validation questions the table picks: DPO, not KTO
    settings = adpo.merged_settings(adpo.QUICK, {"select": {"questions": 0}})
    assert adpo.select_best_adpo(methods, settings, 0, None) == {"best": "adpo_dpo", "on": "table", "questions": None,
                                                                 "seed": None, "scores": {}}


def test_quick_run_report_and_rebuild(quick_run):
    text = (quick_run / "report.md").read_text()
    assert "AdPO (SimPO)" in text and "Transferred into the second VLM" in text and "--quick" in text
    assert (quick_run / "clean_vs_robust.png").stat().st_size > 1000
    assert json.loads((quick_run / "report.json").read_text())["kind"] == "experiment-adpo"
    (quick_run / "report.md").unlink()
    assert main(["report", str(quick_run)]) == 0
    assert "## Targets" in (quick_run / "report.md").read_text()
    for row in ("tecoa", "fare", "adpo_dpo", "adpo_no_la"):
        assert (quick_run / "runs" / row / "metrics.csv").is_file()


def test_full_settings_build_valid_configs():
    loop = TrainConfig(**adpo.FULL["train"])
    assert {adpo.family(row) for row in adpo.ROWS if row != "original"} == set(adpo.FULL["lr"]) == {"tecoa", "fare",
                                                                                                  "adpo"}
    for row in ("tecoa", "fare", *adpo.ADPO_ROWS):
        trained = adpo._loop(adpo.FULL, 3, row)
        assert trained.lr == adpo.FULL["lr"][adpo.family(row)] > 0 and trained.seed == 3
        assert trained.steps == loop.steps and trained.batch_size == loop.batch_size
    with pytest.raises(ValueError, match="trains nothing"):
        adpo.family("original")
    assert loop.steps >= 100 and adpo.FULL["eps"] == "4/255" and adpo.FULL["attack_steps"] == 10
    for row, fields in adpo.ADPO_ROWS.items():
        config = AdPOConfig(**fields, eps=adpo.FULL["eps"], schedule_steps=loop.steps)
        assert config.attack_steps == 10
    assert AdPOConfig(**adpo.ADPO_ROWS["adpo_no_la"]).la_weight == 0
    scheduled = AdPOConfig(**adpo.ADPO_ROWS["adpo_scheduled"], schedule_steps=loop.steps)
    assert scheduled.la_at(0) == 2.0 and abs(scheduled.la_at(loop.steps - 1) - 0.5) < 1e-9


def test_partial_runs_merge_settings_and_score_targets_without_transfer():
    merged = adpo.merged_settings(adpo.FULL, {"train": {"steps": 40}, "transfer_vlm": None})
    assert merged["train"]["steps"] == 40 and merged["train"]["batch_size"] == 32 and merged["transfer_vlm"] is None
    with pytest.raises(ValueError, match="unknown AdPO experiment setting"):
        adpo.merged_settings(adpo.FULL, {"trian": {}})
    row = lambda clean, robust, seconds: {"clean": clean, "robust": {"4/255": robust}, "step_seconds": seconds}  # noqa: E731
    methods = {"original": row(0.9, 0.05, None), "fare": row(0.8, 0.30, 2.0),
               "adpo_dpo": {**row(0.85, 0.40, 1.0), "precompute_seconds": 20.0}, "adpo_ipo": row(0.9, 0.35, 1.0)}
    targets = adpo_targets.targets(methods, {}, 10, "adpo_dpo")
    assert targets["best_adpo"] == "adpo_dpo" and targets["selected_on"] == "table" and targets["met_robust_and_clean"]
    assert abs(targets["robust_vs_fare"] - 0.10) < 1e-12 and abs(targets["clean_vs_fare"] - 0.05) < 1e-12
    assert targets["transfer_retention"] is None
    assert targets["step_cost_vs_fare"] == 0.5 and targets["step_cost_vs_fare_amortized"] == (1.0 + 2.0) / 2.0
    transfer = {"original": row(0.9, 0.05, None), "adpo_dpo": row(0.8, 0.32, 1.0)}
    assert abs(adpo_targets.targets(methods, transfer, 10, "adpo_dpo")["transfer_retention"] - 0.27 / 0.35) < 1e-12


def test_the_target_is_decided_on_the_confirmation_questions_when_the_run_has_them():
    row = lambda clean, robust: {"clean": clean, "robust": {"4/255": robust}, "step_seconds": 1.0}  # noqa: E731
    methods = {"original": row(0.9, 0.05), "fare": row(0.8, 0.30), "adpo_dpo": row(0.85, 0.40)}
    # on the table AdPO leads by 10 points; on the 4 confirmation questions by 1/4 robust and 0 clean
    confirm = {"adpo_dpo": {"n": 4, "clean_scores": [1, 1, 1, 0], "robust_scores": [1, 1, 0, 0]},
               "fare": {"n": 4, "clean_scores": [1, 1, 0, 1], "robust_scores": [1, 0, 0, 0]}}
    targets = adpo_targets.targets(methods, {}, 10, "adpo_dpo", confirm)
    assert targets["decided_on"] == "confirmation" and targets["questions"] == 4
    assert targets["robust_vs_fare"] == 0.25 and targets["clean_vs_fare"] == 0.0
    # differences 0, 1, 0, 0: sample sd 1/2, standard error 1/4
    assert abs(targets["robust_vs_fare_se"] - 0.25) < 1e-12
    assert abs(targets["robust_vs_fare_table"] - 0.10) < 1e-12
    assert targets["met_robust_and_clean"]
    confirm["adpo_dpo"]["clean_scores"] = [1, 0, 0, 0]  # clean 2 questions (50 points) below FARE: not met
    assert not adpo_targets.targets(methods, {}, 10, "adpo_dpo", confirm)["met_robust_and_clean"]


def test_rows_spread_over_two_worker_processes_give_the_same_numbers(quick_run, tmp_path):
    """The rows are independent: run in two spawned processes (one thread each) they score what the sequential run
    scored (every fraction; only the timings differ)."""
    rows = ["adpo_dpo", "adpo_kto"]
    parallel = adpo.run_adpo_experiment(tmp_path / "parallel", quick=True, progress=False, rows=rows,
                                        overrides={"workers": 2})
    sequential = json.loads((quick_run / "metrics.json").read_text())
    assert parallel["settings"]["workers"] == 2 and list(parallel["methods"]) == ["original", "fare", *rows]
    for table in ("methods", "transfer"):
        for row, values in parallel[table].items():
            for key in ("clean", "cider", "robust", "targeted_success", "attacked_clean"):
                assert values[key] == sequential[table][row][key], (table, row, key)


def test_a_run_written_before_the_target_check_still_rebuilds_its_report(quick_run, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(quick_run, old)
    metrics = json.loads((old / "metrics.json").read_text())
    metrics.pop("confirm")
    metrics.pop("selection")  # and before the best row was picked on validation questions
    for key in ("decided_on", "selected_on", "questions", "robust_vs_fare_se", "clean_vs_fare_se",
                "robust_vs_fare_table", "clean_vs_fare_table"):
        metrics["targets"].pop(key, None)
    metrics["settings"].pop("lr")  # and before each family had its own learning rate
    metrics["settings"]["loop"]["lr"] = 3e-4
    (old / "metrics.json").write_text(json.dumps(metrics))
    assert main(["report", str(old)]) == 0
    text = (old / "report.md").read_text()
    assert "No target check in this run." in text and "on the table: robust accuracy at 4/255 vs FARE" in text
    assert "(by APGD 4/255 in the table)" in text and "validation questions" not in text
    assert "(AdamW, lr 0.0003, seed 0)" in text


def test_the_report_names_each_familys_learning_rate(quick_run):
    text = (quick_run / "report.md").read_text()
    rates = adpo.QUICK["lr"]
    assert (f"TeCoA {rates['tecoa']:g}, FARE {rates['fare']:g}, AdPO {rates['adpo']:g}" in text
            and json.loads((quick_run / "metrics.json").read_text())["settings"]["lr"] == rates)
    assert "lr" not in json.loads((quick_run / "metrics.json").read_text())["settings"]["loop"]
    for row in ("tecoa", "fare", "adpo_dpo", "adpo_kto"):  # each row trained at its family's rate
        state = json.loads((quick_run / "runs" / row / "state" / "train_state.json").read_text())
        assert state["config"]["train"]["lr"] == rates[adpo.family(row)]


def test_every_row_has_a_report_name_in_the_experiments_order():
    from vlalign.experiments.adpo_report import NAMES

    assert tuple(NAMES) == adpo.ROWS + adpo.EXTRA_ROWS


def test_an_extra_row_runs_on_request_and_an_unknown_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown rows"):
        adpo.run_adpo_experiment(tmp_path, quick=True, progress=False, rows=["adpo_dp"])
    metrics = adpo.run_adpo_experiment(tmp_path / "extra", quick=True, progress=False, rows=["adpo_dpo_reference"],
                                       overrides={"transfer_vlm": None, "confirm": {"questions": 0}})
    assert list(metrics["methods"]) == ["original", "fare", "adpo_dpo_reference"] and metrics["confirm"] == {}
    assert metrics["targets"]["decided_on"] == "table"
