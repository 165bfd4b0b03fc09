"""``vlalign report RUN_DIR``: rebuild a run's ``report.md`` and standalone ``report.html`` from its own files."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from vlalign.commands.common import add_command

#: Run kind (recorded in ``report.json``) -> ``"module:function"`` building the Markdown body from the run folder.
#: Kinds missing here are rebuilt from the body of their existing ``report.md``.
BUILDERS: dict[str, str] = {
    "train": "vlalign.reporting.training:training_report",
    "pretrain": "vlalign.reporting.training:training_report",
    "pretrain-vlm": "vlalign.reporting.training:vlm_pretraining_report",
    "eval": "vlalign.commands.report:_eval_report",
    "robust-eval": "vlalign.commands.report:_robust_eval_report",
    "control": "vlalign.experiments.control:report_from_run",
    "experiment-robust": "vlalign.experiments.robust:report_from_run",
    "experiment-advlora": "vlalign.experiments.advlora_report:report_from_run",
    "experiment-advlora-select": "vlalign.experiments.advlora_report:selection_report_from_run",
    "experiment-adpo": "vlalign.experiments.adpo_report:report_from_run",
    "experiment-typographic": "vlalign.experiments.typographic_report:report_from_run",
    "demo": "vlalign.experiments.demo:report_from_run",
    "experiment-attribute": "vlalign.experiments.attribute.run:report_from_run",
    "probe": "vlalign.reporting.probe:report_from_run",
    "experiment-attribute-seeds": "vlalign.experiments.attribute.seeds:report_from_run",
}


def register(sub: argparse._SubParsersAction) -> None:
    parser = add_command(sub, "report", "rebuild a run's report.md and report.html from its files",
                         "vlalign report runs/dpo")
    parser.add_argument("run", type=Path, help="a folder written by vlalign train, eval, robust-eval, experiment, …")
    parser.set_defaults(handler=run)


def _metrics(run_dir: Path) -> dict:
    import json

    return json.loads((run_dir / "metrics.json").read_text())


def _eval_report(run_dir: Path) -> str:
    from vlalign.reporting.run_report import read_report_info
    from vlalign.reporting.tables import zero_shot_report

    grid = "failures.png" if (run_dir / "failures.png").is_file() else None
    return zero_shot_report(_metrics(run_dir), read_report_info(run_dir)["title"], grid)


def _robust_eval_report(run_dir: Path) -> str:
    from vlalign.reporting.robust import robust_report
    from vlalign.reporting.run_report import read_report_info

    grid = "failures.png" if (run_dir / "failures.png").is_file() else None
    return robust_report(_metrics(run_dir), read_report_info(run_dir)["title"], failure_grid=grid)


def rebuild(run_dir: Path) -> Path:
    """Rewrite ``report.md``/``report.html`` of ``run_dir``; returns the Markdown file."""
    from vlalign.reporting.run_report import read_report_info, report_body, write_report

    info = read_report_info(run_dir)
    kind = info.pop("kind")
    title = info.pop("title", None)
    if kind in BUILDERS:
        module, function = BUILDERS[kind].split(":")
        body = getattr(importlib.import_module(module), function)(run_dir)
    else:
        body = report_body((run_dir / "report.md").read_text())
    return write_report(run_dir, kind, body, info, title)


def run(args: argparse.Namespace) -> int:
    if not args.run.is_dir():
        raise FileNotFoundError(f"{args.run}: no such run folder")
    path = rebuild(args.run)
    print(f"rebuilt {path} and {path.with_suffix('.html')}")
    return 0
