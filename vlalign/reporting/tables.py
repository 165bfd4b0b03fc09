"""Plain-text and Markdown tables that a person can read in a terminal or a report."""

from __future__ import annotations

from collections.abc import Sequence


def _cell(value: object, digits: int) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "—" if value is None else str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table; floats are rounded to ``digits``."""
    text_rows = [[_cell(v, digits) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text_rows)) if text_rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in text_rows)])


def percent(value: float | None) -> str:
    """0.853 -> '85.3%'."""
    return "—" if value is None else f"{100 * value:.1f}%"
