"""Tables and Markdown reports of a robust evaluation, from its ``metrics.json`` form
(:meth:`vlalign.evaluation.robust.RobustEvaluation.metrics`), so a report can be rebuilt from a run folder."""

from __future__ import annotations

from typing import Any

from vlalign.evaluation.robust import UNBOUNDED
from vlalign.reporting.tables import markdown_table, percent


def robust_table(metrics: dict[str, Any]) -> str:
    """Markdown table: one row per attack (and the worst case), one column per ε."""
    eps = list(metrics["worst_case"])
    rows = [[name, *(percent(by_eps.get(e)) for e in eps)]
            for name, by_eps in metrics["robust"].items() if UNBOUNDED not in by_eps]
    rows.append(["**worst case**", *(f"**{percent(metrics['worst_case'][e])}**" for e in eps)])
    table = markdown_table(["attack", *(f"ε = {e}" for e in eps)], rows)
    unbounded = [[name, percent(by_eps[UNBOUNDED])] for name, by_eps in metrics["robust"].items() if UNBOUNDED in by_eps]
    if unbounded:
        table += "\n\n" + markdown_table(["attack without an ε-ball", "accuracy"], unbounded)
    return table


def robust_report(metrics: dict[str, Any], title: str = "Robust evaluation", command: str | None = None,
                  failure_grid: str | None = None) -> str:
    """A Markdown report: clean accuracy, the table, the grid of adversarial images that fool the model (a file
    name beside the report), warnings, settings and how to reproduce."""
    lines = [f"# {title}", "", f"Clean accuracy: **{percent(metrics['clean'])}** on {metrics['n']} images.",
             "", "Robust accuracy (ℓ∞ unless the attack says otherwise); the worst case counts a sample as robust "
             "only if it survives every bounded attack at that ε.", "", robust_table(metrics), ""]
    if failure_grid:
        lines += [f"![adversarial images that fool the model]({failure_grid})", ""]
    lines.append("## Gradient-masking checks")
    lines.append("")
    if metrics["warnings"]:
        lines += [f"- ⚠ {w}" for w in metrics["warnings"]]
    else:
        lines.append("No warnings: accuracy falls with ε and with steps, no black-box attack beats the white-box "
                     "ones, input gradients are finite and non-zero, and the model is deterministic.")
    lines += ["", "## Settings", "", *(f"- {k}: {v}" for k, v in (metrics.get("settings") or {}).items())]
    if command:
        lines += ["", "Reproduce:", "", f"    {command}"]
    return "\n".join(lines) + "\n"
