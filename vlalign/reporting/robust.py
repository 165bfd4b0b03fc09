"""Tables and Markdown reports of a robust evaluation (:class:`vlalign.evaluation.robust.RobustEvaluation`)."""

from __future__ import annotations

from vlalign.attacks.threat_model import format_eps
from vlalign.evaluation.robust import UNBOUNDED, RobustEvaluation
from vlalign.reporting.tables import markdown_table, percent


def robust_table(result: RobustEvaluation) -> str:
    """Markdown table: one row per attack (and the worst case), one column per ε."""
    columns = [format_eps(e) for e in result.eps]
    robust = result.robust_accuracy()
    rows = [[name, *(percent(by_eps.get(e)) for e in result.eps)]
            for name, by_eps in robust.items() if UNBOUNDED not in by_eps]
    worst = result.worst_case()
    rows.append(["**worst case**", *(f"**{percent(worst[e])}**" for e in result.eps)])
    table = markdown_table(["attack", *(f"ε = {c}" for c in columns)], rows)
    unbounded = [[name, percent(by_eps[UNBOUNDED])] for name, by_eps in robust.items() if UNBOUNDED in by_eps]
    if unbounded:
        table += "\n\n" + markdown_table(["attack without an ε-ball", "accuracy"], unbounded)
    return table


def robust_report(result: RobustEvaluation, title: str = "Robust evaluation", command: str | None = None) -> str:
    """A Markdown report: clean accuracy, the table, warnings, settings and how to reproduce."""
    lines = [f"# {title}", "", f"Clean accuracy: **{percent(result.clean_accuracy)}** on {result.labels.numel()} images.",
             "", "Robust accuracy (ℓ∞ unless the attack says otherwise); the worst case counts a sample as robust "
             "only if it survives every bounded attack at that ε.", "", robust_table(result), ""]
    lines.append("## Gradient-masking checks")
    lines.append("")
    if result.warnings:
        lines += [f"- ⚠ {w}" for w in result.warnings]
    else:
        lines.append("No warnings: accuracy falls with ε and with steps, no black-box attack beats the white-box "
                     "ones, input gradients are finite and non-zero, and the model is deterministic.")
    lines += ["", "## Settings", "", *(f"- {k}: {v}" for k, v in result.settings.items())]
    if command:
        lines += ["", "Reproduce:", "", f"    {command}"]
    return "\n".join(lines) + "\n"
