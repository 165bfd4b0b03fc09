"""``vlalign report RUN_DIR``: rebuild a run's ``report.md`` and standalone ``report.html`` from its own files."""

from __future__ import annotations

import argparse
import importlib
import json
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
    from vlalign.io import read_json

    return read_json(run_dir / "metrics.json", ValueError, expect=dict)


def _unreadable_json(run_dir: Path) -> list[str]:
    """The JSON files of ``run_dir`` (and its subfolders) that do not parse."""
    bad = []
    for path in sorted(run_dir.rglob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            bad.append(str(path.relative_to(run_dir)))
    return bad


def builder_error(run_dir: Path, kind: str, exc: Exception) -> ValueError:
    """A one-line error for a report builder that failed on the files of ``run_dir``, naming the file or the key."""
    again = "re-run the command in its report.json to write it again"
    if isinstance(exc, json.JSONDecodeError):
        bad = _unreadable_json(run_dir)
        return ValueError(f"{run_dir}: {', '.join(bad) or 'a JSON file'} is not valid JSON ({exc}); {again}")
    if isinstance(exc, KeyError):
        return ValueError(f"{run_dir}: its metrics.json (or another file of the run) lacks {exc.args[0]!r}, which "
                          f"the {kind} report needs: written by an older vlalign, or edited? {again}")
    return ValueError(f"{run_dir}: its files do not have the form the {kind} report expects "
                      f"({type(exc).__name__}: {exc}): written by an older vlalign, or edited? {again}")


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
    if kind in ("train", "pretrain") and not (run_dir / "metrics.json").is_file():
        raise FileNotFoundError(f"{run_dir / 'metrics.json'}: missing; the {kind} run in {run_dir} did not finish "
                                "(re-run its command to resume it), so there is no result to report")
    if kind in BUILDERS:
        module, function = BUILDERS[kind].split(":")
        try:
            body = getattr(importlib.import_module(module), function)(run_dir)
        except (KeyError, TypeError, IndexError, AttributeError, json.JSONDecodeError) as exc:
            raise builder_error(run_dir, kind, exc) from exc
    elif (run_dir / "report.md").is_file():
        body = report_body((run_dir / "report.md").read_text())
    else:
        raise FileNotFoundError(f"{run_dir}: its report.json names the kind {kind!r}, which this vlalign cannot "
                                f"rebuild (known: {', '.join(sorted(BUILDERS))}), and there is no report.md to keep")
    return write_report(run_dir, kind, body, info, title)


def run(args: argparse.Namespace) -> int:
    if not args.run.is_dir():
        raise FileNotFoundError(f"{args.run}: no such run folder")
    path = rebuild(args.run)
    print(f"rebuilt {path} and {path.with_suffix('.html')}")
    return 0
