"""Review i's findings on reports, ``vlalign report``, ``vlalign config`` and config validation: each test fails
on the code before its fix."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

from vlalign.cli import main  # noqa: E402
from vlalign.reporting.html import markdown_to_html  # noqa: E402
from vlalign.reporting.tables import markdown_table, metrics_table, percent  # noqa: E402


def _capture_figures(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list:
    """Record every figure ``module.name`` (a save function taking the figure first) is given, and save it."""
    seen: list = []
    original = getattr(module, name)

    def record(fig, *args, **kwargs):
        fig.canvas.draw()
        seen.append((fig, [ax.get_legend() for ax in fig.axes], [ax.get_window_extent() for ax in fig.axes],
                     [ax.get_xlim() for ax in fig.axes], [ax.get_ylim() for ax in fig.axes]))
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(module, name, record)
    return seen


# ------------------------------------------------------------------------------ 1: raw HTML and '|' in cells
def test_report_html_shows_user_strings_as_text_and_keeps_tables(tmp_path):
    name = "/m<i>/p|q <img src=x onerror=alert(1)>"
    text = f"# Zero-shot evaluation of {name}\n\n" + markdown_table(["metric", "value"], [["model", name]]) + "\n"
    page = markdown_to_html(text, tmp_path, "t")
    assert "<img src=x" not in page and "<i>" not in page and "onerror=alert(1)&gt;" in page
    assert "<td>/m&lt;i&gt;/p|q &lt;img src=x onerror=alert(1)&gt;</td>" in page  # the whole name in its cell
    assert "<table>" in page and "<pre><code>" in markdown_to_html("```\nx\n```\n", tmp_path, "t")


def test_table_cells_escape_pipes_and_line_breaks():
    table = markdown_table(["a|b", "c"], [["x|y", "line\nbreak"]])
    assert "a\\|b" in table and "x\\|y" in table and "line break" in table and table.count("\n") == 2
    assert "| warnings | none" in metrics_table({"warnings": []})


# ------------------------------------------------------------------------ 2: robust-eval without bounded attack
def test_robust_report_without_a_bounded_attack_claims_no_worst_case_and_no_unrun_checks():
    from vlalign.reporting.robust import robust_report

    metrics = {"clean": 1.0, "n": 16, "robust": {"typographic": {"unbounded": 0.5625}},
               "worst_case": {"1/255": 1.0, "4/255": 1.0}, "warnings": [],
               "checks": {"zero_gradient_samples": 0, "nonfinite_gradient_samples": 0}, "settings": {}}
    text = robust_report(metrics)
    assert "worst case**" not in text and "100.0%" not in text.split("Clean accuracy")[1].split("\n", 1)[1]
    assert "No attack with an ε-ball was run" in text and "56.2%" in text
    assert "falls with ε" not in text and "with steps" not in text and "Not checked" in text
    bounded = {**metrics, "robust": {"pgd": {"1/255": 0.75, "4/255": 0.125}, "square": {"1/255": 1.0, "4/255": 0.9}},
               "worst_case": {"1/255": 0.75, "4/255": 0.125},
               "checks": {**metrics["checks"], "steps": {"attack": "pgd"}}}
    text = robust_report(bounded)
    assert "**75.0%**" in text and "accuracy falls with ε" in text and "steps" in text and "Not checked" not in text


# ----------------------------------------------------------- 3 and 4: resolved hyperparameters, the logged lr
def test_a_training_run_records_and_reports_what_its_nulls_resolved_to_and_logs_the_lr_each_step_used(tmp_path):
    config = tmp_path / "dpo.yaml"
    config.write_text("method: dpo\noptions: {trainable: head}\ntrain: {steps: 20, batch_size: 16, log_every: 1, "
                      "checkpoint_every: 20}\ndata: {n_pref: 32, n_reg: 32}\neval: {images: 12}\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out)]) == 0
    resolved = json.loads((out / "resolved_config.json").read_text())
    assert resolved["method"]["beta"] == 1.0 and resolved["method"]["lam"] == 1.0
    assert (resolved["train"]["optimizer"], resolved["train"]["lr"]) == ("adamax", 2e-3)
    text = (out / "report.md").read_text()
    for row in ("| options.beta", "| train.lr", "0.002", "adamax", "| train.weight_decay"):
        assert row in text, row
    # warm-up 10% of 20 steps = 2 steps to the peak 2e-3, then cosine: the rate step s trained with
    import torch

    from vlalign.training.schedule import warmup_cosine

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2e-3)
    scheduler, expected = warmup_cosine(optimizer, 20, 0.1), {}
    for s in range(20):
        expected[s] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    with (out / "metrics.csv").open() as handle:
        logged = {int(r["step"]): float(r["lr"]) for r in csv.DictReader(handle)}
    assert logged[0] == pytest.approx(expected[0]) and logged[0] < 2e-3  # the warm-up shows
    assert all(logged[s] == pytest.approx(expected[s]) for s in range(20)) and logged[19] > 0


def test_config_show_prints_what_each_null_stands_for_and_loads_back_editable(tmp_path, capsys):
    from vlalign.pipelines.train import default_config, load_training_config

    assert main(["config", "show", "dpo"]) == 0
    shown = capsys.readouterr().out
    lr = next(line for line in shown.splitlines() if line.strip().startswith("lr:"))
    assert lr.strip().startswith("lr: null") and "null here means 0.0001" in lr
    assert "beta: null" in shown and "null here means 1" in shown and "True" not in shown
    assert main(["config", "show", "advlora"]) == 0
    shown = capsys.readouterr().out
    assert "  cluster_init: null" in shown and "  adversarial: true" in shown
    path = tmp_path / "advlora.yml"
    path.write_text(shown)
    assert load_training_config(path) == default_config("advlora")
    path.write_text(shown.replace("  trainable: advlora", "  trainable: lora"))  # 9: only trainable edited
    options = load_training_config(path).options
    assert (options.cluster_init, options.adaptive_alpha, options.alignment_weight) == (False, False, 0.0)


# -------------------------------------------------------------------------------- 10: ε as a plain YAML number
@pytest.mark.parametrize("method", ["tecoa", "advlora", "adpo"])
def test_eps_fields_take_plain_yaml_numbers(tmp_path, method):
    from vlalign.attacks.threat_model import parse_eps
    from vlalign.config import ConfigError
    from vlalign.pipelines.train import load_training_config

    path = tmp_path / "c.yml"
    path.write_text(f"method: {method}\noptions: {{eps: 0.0157, attack_step_size: 0.004}}\n"
                    "eval: {eps: [0.008, 4/255]}\n")
    config = load_training_config(path)
    assert parse_eps(config.options.eps) == 0.0157 and parse_eps(config.options.attack_step_size) == 0.004
    assert [parse_eps(e) for e in config.eval.eps] == [0.008, 4 / 255]
    path.write_text(f"method: {method}\noptions: {{eps: 4}}\n")
    with pytest.raises(ConfigError, match="did you mean 4/255"):
        load_training_config(path)
    path.write_text(f"method: {method}\noptions: {{eps: true}}\n")
    with pytest.raises(ConfigError, match="options.eps: expected a number or a string"):
        load_training_config(path)


# ------------------------------------------------------------------------ 5: vlalign report's errors name files
def _eval_folder(tmp_path: Path) -> Path:
    from vlalign.reporting.run_report import write_report

    run = tmp_path / "ev"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"accuracy": 0.35, "model": "mini"}))
    write_report(run, "eval", "# Zero-shot evaluation of mini\n", {"command": None})
    return run


def test_vlalign_report_names_the_bad_file_or_missing_key(tmp_path, capsys):
    run = _eval_folder(tmp_path)
    (run / "metrics.json").write_text('{"accuracy": ')
    assert main(["report", str(run)]) == 2
    assert f"{run / 'metrics.json'}: not valid JSON" in capsys.readouterr().err
    robust = tmp_path / "rob"
    robust.mkdir()
    (robust / "metrics.json").write_text(json.dumps({"clean": 1.0}))
    (robust / "report.json").write_text(json.dumps({"kind": "robust-eval", "title": "R"}))
    assert main(["report", str(robust)]) == 2
    err = capsys.readouterr().err
    assert "metrics.json (or another file of the run) lacks '" in err and str(robust) in err and "Traceback" not in err
    train = tmp_path / "train"
    train.mkdir()
    (train / "report.json").write_text(json.dumps({"kind": "train"}))
    assert main(["report", str(train)]) == 2
    assert "metrics.json: missing" in capsys.readouterr().err
    (train / "report.json").write_text(json.dumps({"kind": "nosuch"}))
    assert main(["report", str(train)]) == 2
    assert "the kind 'nosuch'" in capsys.readouterr().err


# ------------------------------------------------------------------------------- 11: a missing figure is named
def test_a_missing_figure_is_named_in_a_warning(tmp_path, capsys):
    run = _eval_folder(tmp_path)
    from vlalign.reporting.run_report import write_report

    write_report(run, "demo", "# D\n\n![grid](gone.png)\n", {"command": None})
    assert "gone.png" in capsys.readouterr().err


# ---------------------------------------------------------------------- 6, 7, 12: legends and axes of figures
def test_attribute_sweep_legend_leaves_the_axes_free(monkeypatch, tmp_path):
    from vlalign.reporting import bias_plots

    seen = _capture_figures(monkeypatch, bias_plots, "_save")
    t = [i / 20 for i in range(21)]
    panel = {"t": t, "a_rate_given_a": [1 - x for x in t], "a_rate_given_b": t, "a_rate": [0.5] * 21,
             "activity_accuracy": [0.95] * 21, "t_star": 0.5}
    bias_plots.attribute_sweep_figure({"DPO": panel, "KTO": panel}, tmp_path / "fig3.png")
    fig, legends, boxes, _, _ = seen[0]
    fig.tight_layout()
    fig.canvas.draw()
    for ax, legend in zip(fig.axes, legends):
        assert not legend.get_window_extent().overlaps(ax.get_window_extent())  # t* and the curves stay visible
        assert legend.get_window_extent().y1 < ax.get_window_extent().y0


def test_advlora_robustness_legend_sits_above_the_bars(monkeypatch, tmp_path):
    from vlalign.experiments import advlora_report

    seen = _capture_figures(monkeypatch, advlora_report, "save_figure")
    recall = {"i2t": {"r1": 0.9, "r5": 1.0, "r10": 1.0}, "t2i": {"r1": 0.9, "r5": 1.0, "r10": 1.0}, "mR": 0.96}
    conditions = {c: recall for c in advlora_report.CONDITIONS}
    metrics = {"alpha": {}, "rank_sweep": {"1": {"clean": recall, "pgd": recall}}, "settings": {"eval_steps": 2},
               "pretrained": conditions, "methods": {"lora_clean": conditions}}
    advlora_report.write_plots(metrics, tmp_path)
    fig = seen[-1][0]
    ax = fig.axes[0]
    assert ax.get_legend().get_window_extent().y0 >= ax.get_window_extent().y1 - 1


def test_adpo_scatter_axes_start_at_zero(monkeypatch, tmp_path):
    from vlalign.experiments import adpo_report

    seen = _capture_figures(monkeypatch, adpo_report, "save_figure")
    point = {"clean": 0.0, "robust": {"4/255": 0.0}}
    adpo_report._plot({"methods": {"original": point, "fare": point}, "transfer": {}}, tmp_path / "c.png")
    _, _, _, xlims, ylims = seen[0]
    assert all(lo >= 0 for lo, _ in xlims) and all(lo >= 0 for lo, _ in ylims)


# ------------------------------------------------------------------------------------ 8: one unit per quantity
def test_rates_are_percent_and_differences_points_across_reports():
    from vlalign.experiments.attribute.report import target_label
    from vlalign.experiments.control import _table
    from vlalign.reporting.probe import probe_report
    from vlalign.reporting.tables import points

    assert (percent(0.853), points(0.233), points(0.233, signed=True)) == ("85.3%", "23.3 pt", "+23.3 pt")
    control = {"t": [0.0], "clean": [0.9], "typographic": [0.083], "written_label_rate": [0.817],
               "nonreading": [0.317]}
    row = _table(control).splitlines()[2]
    assert "90.0%" in row and "8.3%" in row and "+23.4 pt" in row and "0.233" not in row
    split = {"zero_shot": 0.942, "probe": 0.9, "probe_train": 0.95, "written_label_rate": 0.5, "l2": 1.0}
    metrics = {"model": "mini", "reading_effect": 0.2, "splits": {"clean": split, "typographic": split,
                                                                  "nonreading": split},
               "settings": {"l2": 1.0, "n_train": 10, "n_test": 10, "train_seed": 0, "test_seed": 1}}
    targets = probe_report(metrics).split("## Targets")[1]
    assert "≥ 85.0%" in targets and "94.2%" in targets and "0.942" not in targets and "0.85" not in targets
    assert target_label("flipped rate >= 0.88") == "flipped rate ≥ 88%"


def test_no_warning_text_reads_with_one_check():
    from vlalign.reporting.robust import no_warning_text

    text = no_warning_text({"typographic": {"unbounded": 0.5}}, {})
    assert text.startswith("No warnings: the model is deterministic.") and "  " not in text
