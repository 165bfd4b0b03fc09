"""Every run's report: ``report.md`` and a standalone ``report.html`` (figures embedded), plus ``report.json``,
which records what kind of run it was, the command that reproduces it, the versions and the wall time, so that
``vlalign report RUN_DIR`` can rebuild both files from the run's own outputs."""

from __future__ import annotations

import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from vlalign.io import atomic_write_json, atomic_write_text, read_json
from vlalign.reporting.html import markdown_to_html_checked

REPORT_INFO = "report.json"


def versions() -> dict[str, str]:
    """The versions a result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    import torch
    import transformers

    try:
        vlalign_version = version("vlalign")
    except PackageNotFoundError:  # run from a source tree that was never installed
        vlalign_version = "unknown"
    return {"vlalign": vlalign_version, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def command_line() -> str | None:
    """``vlalign …`` as this process was invoked (None when not run from the command line)."""
    argv = sys.argv
    if not argv or not (argv[0].endswith(("vlalign", "cli.py")) or "vlalign.cli" in " ".join(argv[:3])):
        return None
    return "vlalign " + " ".join(shlex.quote(a) for a in argv[1:])


def run_info(command: str | None = None, seconds: float | None = None, **extra: Any) -> dict[str, Any]:
    """What a report records about the run itself."""
    return {"command": command if command is not None else command_line(), "versions": versions(),
            "seconds": None if seconds is None else round(float(seconds), 1),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}


RUN_HEADING = "\n## Run\n"


def report_body(text: str) -> str:
    """A written ``report.md`` without the "Run" section :func:`write_report` appended."""
    return text.split(RUN_HEADING)[0] if RUN_HEADING in text else text


def _run_section(info: dict[str, Any]) -> str:
    lines = ["## Run", ""]
    if info.get("command"):
        lines += ["Reproduce:", "", f"    {info['command']}", ""]
    if info.get("seconds") is not None:
        lines.append(f"- wall time: {info['seconds']:.0f} s")
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items()))
    if info.get("finished"):
        lines.append(f"- finished: {info['finished']}")
    return "\n".join(lines) + "\n"


def write_report(out: str | Path, kind: str, text: str, info: dict[str, Any], title: str | None = None) -> Path:
    """Write ``report.md`` (``text`` plus a "Run" section), ``report.html`` and ``report.json`` into ``out``; a
    figure the report shows whose file is missing is named in a warning on stderr."""
    out = Path(out)
    full = text.rstrip() + "\n\n" + _run_section(info)
    title = title or next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), kind)
    atomic_write_text(out / "report.md", full)
    page, missing = markdown_to_html_checked(full, out, title)
    atomic_write_text(out / "report.html", page)
    if missing:
        print(f"warning: {out / 'report.html'}: {len(missing)} figure(s) missing, shown as broken images: "
              f"{', '.join(missing)}", file=sys.stderr)
    atomic_write_json(out / REPORT_INFO, {"kind": kind, "title": title, **info})
    return out / "report.md"


def read_report_info(run_dir: str | Path) -> dict[str, Any]:
    """The ``report.json`` of a run folder (a clear error when the folder has none)."""
    path = Path(run_dir) / REPORT_INFO
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; not a run folder written by vlalign (or written before reports "
                                "recorded their kind)")
    info = read_json(path, ValueError)
    if not isinstance(info, dict) or "kind" not in info:
        raise ValueError(f"{path}: expected an object with a \"kind\"")
    return info
