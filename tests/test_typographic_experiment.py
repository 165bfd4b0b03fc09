"""`vlalign experiment typographic --quick` runs end to end and writes the Table 1 shapes."""

import json

from vlalign.experiments.typographic import ROW_ORDER, run_typographic_experiment


def test_quick_typographic_experiment_writes_table1(tmp_path):
    metrics = run_typographic_experiment(tmp_path, quick=True)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert set(written["methods"]) == set(ROW_ORDER)
    for row in written["methods"].values():
        assert {"clean", "typographic", "clean_heldout", "typographic_heldout", "kl_clean"} <= set(row)
        assert all(0.0 <= row[k] <= 1.0 for k in ("clean", "typographic", "clean_heldout", "typographic_heldout"))
        assert row["kl_clean"] >= -1e-9
    assert written["methods"]["pretrained"]["kl_clean"] < 1e-6  # KL(π‖π) = 0
    control = written["control"]
    assert set(control) >= {"t", "written_label_rate", "clean", "typographic"} and len(control["t"]) == 3
    assert set(written["bma_vs_ema"]) == {"dpo", "ipo", "kto"}
    for name in ("report.md", "table1.png", "frontier.png", "singular_values.png", "beta_sweep.png"):
        assert (tmp_path / name).is_file()
    assert not (tmp_path / "metrics.partial.json").exists()
    assert metrics["summary"]["best_po"] in ("dpo", "ipo", "kto")
