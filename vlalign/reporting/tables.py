"""Plain-text and Markdown tables that a person can read in a terminal or a report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _cell(value: object, digits: int) -> str:
    """A table cell's text: floats rounded, None as a dash, ``|`` escaped and line breaks turned into spaces (so
    a path or name holding them stays in its cell)."""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if value is None:
        return "—"
    return " ".join(str(value).replace("|", "\\|").splitlines())


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table; floats are rounded to ``digits``."""
    headers = [_cell(h, digits) for h in headers]
    text_rows = [[_cell(v, digits) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text_rows)) if text_rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in text_rows)])


def percent(value: float | None) -> str:
    """An accuracy or rate (a fraction) in percent, the reports' one unit for them: 0.853 -> '85.3%'."""
    return "—" if value is None else f"{100 * value:.1f}%"


def points(value: float | None, signed: bool = False) -> str:
    """A difference of two rates (fractions) in percentage points, the reports' one unit for gaps, drops and
    effects: 0.233 -> '23.3 pt'; ``signed`` (for a difference that can be negative) -> '+23.3 pt'."""
    if value is None:
        return "—"
    return f"{100 * value:+.1f} pt" if signed else f"{100 * value:.1f} pt"


def _flatten(values: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(values, dict):
        rows: list[tuple[str, Any]] = []
        for key, value in values.items():
            rows += _flatten(value, f"{prefix}{key}." if not isinstance(value, (int, float, str, bool, type(None)))
                             else f"{prefix}{key}")
        return rows
    if isinstance(values, list):
        return [(prefix.rstrip("."), ", ".join(str(v) for v in values) if values else "none")]
    return [(prefix.rstrip("."), values)]


def metrics_table(metrics: dict[str, Any]) -> str:
    """Every number of a (nested) metrics dict as a two-column Markdown table."""
    rows = [[name, f"{value:.4f}" if isinstance(value, float) else value] for name, value in _flatten(metrics)]
    return markdown_table(["metric", "value"], rows)


def zero_shot_report(metrics: dict[str, Any], title: str, failure_grid: str | None = None) -> str:
    """The report of ``vlalign eval``: every metric, and the grid of misclassified images (a file beside it)."""
    lines = [f"# {title}", "", metrics_table(metrics), ""]
    if failure_grid:
        lines += ["## Misclassified images", "", f"![misclassified images]({failure_grid})", ""]
    return "\n".join(lines)
