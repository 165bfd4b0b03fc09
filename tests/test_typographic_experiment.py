"""`vlalign experiment typographic --quick` runs end to end and writes the Table 1 shapes."""

import json

from vlalign.experiments.typographic import ROW_ORDER, run_typographic_experiment


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
    # The reading effect sits beside the gap to clean in the report's table, for every method.
    report = (tmp_path / "report.md").read_text()
    assert "| gap to clean (pt) | reading effect (pt) |" in report
    pre = written["methods"]["pretrained"]
    assert f"{100 * (pre['nonreading'] - pre['typographic']):+.1f}" in report.split("| Pretrained")[1].split("\n")[0]
    assert metrics["summary"]["reading_effect_pretrained"] == pre["nonreading"] - pre["typographic"]
    # vlalign report RUN_DIR rebuilds the same report from metrics.json
    from vlalign.commands.report import rebuild

    (tmp_path / "report.md").unlink()
    rebuild(tmp_path)
    assert (tmp_path / "report.md").read_text().split("## Run")[0] == report.split("## Run")[0]
