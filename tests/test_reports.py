"""Every run writes report.md and a standalone report.html; `vlalign report RUN_DIR` rebuilds both."""

from __future__ import annotations

import base64
import json

import pytest

from vlalign.cli import main
from vlalign.reporting.html import markdown_to_html
from vlalign.reporting.run_report import read_report_info, report_body, run_info, write_report
from vlalign.reporting.training import read_metrics_csv, training_curves

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def test_html_embeds_local_images_and_renders_tables(tmp_path):
    (tmp_path / "fig.png").write_bytes(PNG)
    page = markdown_to_html("# T\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![f](fig.png) ![gone](missing.png)\n",
                            tmp_path, "T")
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page and "<td>1</td>" in page
    assert 'src="data:image/png;base64,' + base64.b64encode(PNG).decode() + '"' in page
    assert 'src="missing.png"' in page  # left as is; nothing outside the page is needed for present figures


def test_write_report_adds_the_run_section_and_records_the_kind(tmp_path):
    write_report(tmp_path, "eval", "# My title\n\nbody\n", run_info(command="vlalign eval --out X", seconds=12.3))
    text = (tmp_path / "report.md").read_text()
    assert "## Run" in text and "vlalign eval --out X" in text and "wall time: 12 s" in text and "torch" in text
    assert report_body(text).rstrip() == "# My title\n\nbody"
    info = read_report_info(tmp_path)
    assert info["kind"] == "eval" and info["title"] == "My title" and info["versions"]["vlalign"]
    assert "<h1>My title</h1>" in (tmp_path / "report.html").read_text()


def test_training_curves_plot_every_logged_term(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,loss,loss_pref,lr\n0,1.0,0.7,0.001\n10,0.5,0.4,0.0005\n")
    assert read_metrics_csv(tmp_path / "metrics.csv")["loss_pref"] == [0.7, 0.4]
    assert training_curves(tmp_path / "metrics.csv", tmp_path / "c.png").stat().st_size > 1000


def test_a_training_run_writes_a_report_that_vlalign_report_rebuilds(tmp_path, capsys):
    config = tmp_path / "dpo.yaml"
    config.write_text("method: dpo\noptions: {trainable: head}\ntrain: {steps: 3, batch_size: 16, log_every: 1}\n"
                      "data: {n_pref: 32, n_reg: 32}\neval: {images: 12}\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out)]) == 0
    for name in ("report.md", "report.html", "report.json", "training_curves.png"):
        assert (out / name).is_file(), name
    text = (out / "report.md").read_text()
    assert "# Training run: dpo" in text and "typographic" in text and "![training curves](training_curves.png)" in text
    assert "data:image/png;base64," in (out / "report.html").read_text()
    (out / "report.md").unlink()
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text().count("## Run") == 1 and (out / "report.html").is_file()


def test_report_of_a_folder_without_a_run_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "report.json: missing" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["eval", "robust-eval"])
def test_evaluation_reports_rebuild_from_metrics(tmp_path, kind):
    from vlalign.commands.report import rebuild

    metrics = {"clean": 0.9, "n": 10, "robust": {"pgd": {"4/255": 0.2}}, "worst_case": {"4/255": 0.2},
               "warnings": [], "settings": {"model": "mini"}} if kind == "robust-eval" else {"accuracy": 0.5, "n": 4}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    write_report(tmp_path, kind, "# Evaluation of mini\n\nold body\n", run_info())
    rebuild(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "old body" not in text and text.startswith("# Evaluation of mini")
    assert ("worst case" in text) if kind == "robust-eval" else ("accuracy" in text)
