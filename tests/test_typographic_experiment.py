"""`vlalign experiment typographic --quick` runs end to end and writes the Table 1 shapes."""

import json

import pytest

from benchmarks.typographic_linear import run_linear_rows
from benchmarks.typographic_variant import run_variant
from vlalign.experiments.typographic import run_typographic_experiment
from vlalign.experiments.typographic_report import MONOTONE_TOLERANCE, ROW_ORDER


def test_quick_typographic_experiment_writes_table1(tmp_path):
    metrics = run_typographic_experiment(tmp_path, quick=True)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert set(written["methods"]) == set(ROW_ORDER)
    accuracies = ("clean", "typographic", "clean_heldout", "typographic_heldout", "nonreading", "nonreading_heldout")
    for row in written["methods"].values():
        assert {*accuracies, "kl_clean"} <= set(row)
        assert all(0.0 <= row[k] <= 1.0 for k in accuracies)
        assert row["kl_clean"] >= -1e-9
    assert written["methods"]["pretrained"]["kl_clean"] < 1e-6  # KL(π‖π) = 0
    control = written["control"]
    assert set(control) >= {"t", "written_label_rate", "clean", "typographic", "nonreading"} and len(control["t"]) == 3
    probe = written["linear_probe"]
    assert all(0.0 <= probe[k] <= 1.0 for k in ("typographic", "clean", "nonreading"))
    assert probe["train_seed"] != probe["test_seed"]
    assert set(written["bma_vs_ema"]) == {"dpo", "ipo", "kto"}
    for name in ("report.md", "report.html", "report.json", "table1.png", "frontier.png", "singular_values.png",
                 "beta_sweep.png"):
        assert (tmp_path / name).is_file()
    assert not (tmp_path / "metrics.partial.json").exists()
    assert metrics["summary"]["best_po"] in ("dpo", "ipo", "kto")
    # The best PO method and baseline are chosen on the validation draw, and the headline read on the test draw.
    from vlalign.experiments.typographic_report import BASELINES, best_po_method

    validation = written["validation"]
    assert validation["seed"] == 4000 and set(validation["methods"]) == set(ROW_ORDER)
    assert written["summary"]["selected_on"] == "validation"
    assert written["summary"]["best_po"] == best_po_method(validation["methods"])
    assert written["summary"]["best_baseline"] == max(BASELINES, key=lambda m: validation["methods"][m]["typographic"])
    best = written["methods"][written["summary"]["best_po"]]
    pretrained = written["methods"]["pretrained"]
    assert written["summary"]["typographic_gain"] == pytest.approx(best["typographic"] - pretrained["typographic"])
    assert "chosen on a validation draw (seed 4000" in (tmp_path / "report.md").read_text()
    assert "this sweep covers only t ∈ [-1, 1] of that range" in (tmp_path / "report.md").read_text()
    # A folder from before the validation choice and the coverage field rebuilds with both facts still stated.
    from vlalign.experiments.typographic_report import report_text

    older = json.loads(json.dumps(written))
    for key in ("selected_on", "monotone_t_covered"):
        del older["summary"][key]
    del older["validation"]
    rebuilt = report_text(older)
    assert "this sweep covers only t ∈ [-1, 1] of that range" in rebuilt
    assert "chosen on the test draw" in rebuilt and "predates the validation choice" in rebuilt
    # The reading effect sits beside the gap to clean in the report's table, for every method.
    report = (tmp_path / "report.md").read_text()
    assert "| gap to clean (pt) | reading effect (pt) |" in report
    assert "DPO β = 0.05, λ = 1.0, KL(π_ref‖π_θ); IPO β = 0.01, λ = 0.01, KL(π_θ‖π_ref)" in report  # what each row used
    pre = written["methods"]["pretrained"]
    assert f"{100 * (pre['nonreading'] - pre['typographic']):+.1f}" in report.split("| Pretrained")[1].split("\n")[0]
    # benchmarks.typographic_variant trains the DPO row alone: on the test draw, with the experiment's settings, it
    # reproduces the table's row and its pretrained row, and its differences and gap share follow from them.
    variant = run_variant("dpo", {}, tmp_path / "variant", seed=0, gallery="test", quick=True)
    for name, row in (("dpo", variant["row"]), ("pretrained", variant["pretrained"])):
        assert {k: row[k] for k in accuracies} == {k: written["methods"][name][k] for k in accuracies}
        assert row["kl_clean"] == pytest.approx(written["methods"][name]["kl_clean"], abs=1e-6)
    dpo = written["methods"]["dpo"]
    assert variant["difference"]["typographic"] == pytest.approx(dpo["typographic"] - pre["typographic"])
    assert variant["gap_closed_heldout"] == pytest.approx((dpo["typographic_heldout"] - pre["typographic_heldout"])
                                                          / (pre["clean_heldout"] - pre["typographic_heldout"]))
    assert json.loads((tmp_path / "variant" / "variant.json").read_text())["draw_seed"] == 5000
    # ... and the CE row alone reproduces the table's CE row.
    ce = run_variant("ce", {}, tmp_path / "variant-ce", seed=0, gallery="test", quick=True)
    assert {k: ce["row"][k] for k in accuracies} == {k: written["methods"]["ce"][k] for k in accuracies}
    assert ce["row"]["kl_clean"] == pytest.approx(written["methods"]["ce"]["kl_clean"], abs=1e-6)
    # benchmarks.typographic_linear trains the linear rows alone and reproduces them and the head's Σ^t sweep.
    linear = run_linear_rows(tmp_path / "linear", seed=0, quick=True)
    assert linear["rows"]["materzynska"] == written["methods"]["materzynska"]
    assert linear["rows"]["head_dpo"] == {k: v for k, v in written["head_dpo"].items() if k != "orthogonality_error"}
    assert linear["control"] == written["control"]
    assert linear["typographic_gain"]["head_dpo"] == pytest.approx(written["head_dpo"]["typographic"]
                                                                   - pre["typographic"])
    assert linear["monotone_on_target_range"] == written["summary"]["written_label_rate_monotonic_on_target_range"]
    assert linear["monotone_on_target_range"] == (linear["monotone_violation"] <= MONOTONE_TOLERANCE)
    assert linear["typographic_gain"]["materzynska_heldout"] == pytest.approx(
        written["methods"]["materzynska"]["typographic_heldout"] - pre["typographic_heldout"])
    assert json.loads((tmp_path / "linear" / "linear.json").read_text())["rows"] == linear["rows"]
    assert metrics["summary"]["reading_effect_pretrained"] == pre["nonreading"] - pre["typographic"]
    # vlalign report RUN_DIR rebuilds the same report from metrics.json
    from vlalign.commands.report import rebuild

    (tmp_path / "report.md").unlink()
    rebuild(tmp_path)
    assert (tmp_path / "report.md").read_text().split("## Run")[0] == report.split("## Run")[0]


def test_summary_figures_on_the_measured_table():
    """Hand-worked on the 2026-12-06 run: IPO has the most typographic accuracy but loses 2.5 clean points, so the
    best PO method is DPO; it closes (0.778 − 0.402) / (0.950 − 0.402) = 68.6% of the gap."""
    from vlalign.experiments.typographic_report import best_po_method, gap_closed, monotone_on

    methods = {"pretrained": {"clean": 0.950, "typographic": 0.402, "clean_heldout": 0.935, "typographic_heldout": 0.252},
               "dpo": {"clean": 0.955, "typographic": 0.778, "clean_heldout": 0.917, "typographic_heldout": 0.628},
               "ipo": {"clean": 0.925, "typographic": 0.782}, "kto": {"clean": 0.957, "typographic": 0.748}}
    assert best_po_method(methods) == "dpo"
    assert best_po_method(methods, clean_tolerance=0.03) == "ipo"
    assert abs(gap_closed(methods["dpo"], methods["pretrained"]) - 0.376 / 0.548) < 1e-12
    assert abs(gap_closed(methods["dpo"], methods["pretrained"], "_heldout") - 0.376 / 0.683) < 1e-12
    control = {"t": [-4.0, -2.0, -1.0, 0.0, 3.0, 4.0], "written_label_rate": [0.68, 0.76, 0.70, 0.47, 0.067, 0.08]}
    assert monotone_on(control)  # the rise below t = -2 and above t = 3 lies outside the range
    assert not monotone_on({**control, "written_label_rate": [0.68, 0.76, 0.70, 0.72, 0.067, 0.08]})
    assert monotone_on({**control, "written_label_rate": [0.68, 0.76, 0.70, 0.705, 0.067, 0.08]})  # within 0.01
