"""Tables and Markdown reports of a robust evaluation, from its ``metrics.json`` form
(:meth:`vlalign.evaluation.robust.RobustEvaluation.metrics`), so a report can be rebuilt from a run folder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vlalign.evaluation.robust import UNBOUNDED
from vlalign.reporting.tables import markdown_table, percent


NO_BOUNDED_ATTACK = ("No attack with an ε-ball was run, so there is no robust accuracy per ε and no worst case: "
                     "the ε values given were not tested.")


def robust_table(metrics: dict[str, Any]) -> str:
    """Markdown table: one row per bounded attack (and the worst case), one column per ε that one of them was run
    at; then the attacks without an ε-ball. Without a bounded attack there is no worst case to show."""
    bounded = {name: by_eps for name, by_eps in metrics["robust"].items() if UNBOUNDED not in by_eps}
    eps = [e for e in metrics["worst_case"] if any(e in by_eps for by_eps in bounded.values())]
    parts = []
    if eps:
        rows = [[name, *(percent(by_eps.get(e)) for e in eps)] for name, by_eps in bounded.items()]
        rows.append(["**worst case**", *(f"**{percent(metrics['worst_case'][e])}**" for e in eps)])
        parts.append(markdown_table(["attack", *(f"ε = {e}" for e in eps)], rows))
    else:
        parts.append(NO_BOUNDED_ATTACK)
    unbounded = [[name, percent(by_eps[UNBOUNDED])] for name, by_eps in metrics["robust"].items() if UNBOUNDED in by_eps]
    if unbounded:
        parts.append(markdown_table(["attack without an ε-ball", "accuracy"], unbounded))
    return "\n\n".join(parts)


def _white_box(name: str) -> bool | None:
    """Whether the attack registered as ``name`` is white-box (None: not a registered attack)."""
    from vlalign.attacks.registry import attack_class

    try:
        return bool(attack_class(name).white_box)
    except ValueError:
        return None


def no_warning_text(robust: Mapping[str, Mapping[Any, float]], checks: Mapping[str, Any], score: str = "accuracy"
                    ) -> str:
    """What a report says when the gradient-masking checks gave no warning: the checks that ran, and the ones
    that could not (``robust``: attack -> ε -> score, an attack without an ε-ball keyed ``unbounded`` or None)."""
    bounded = {name: by_eps for name, by_eps in robust.items() if UNBOUNDED not in by_eps and None not in by_eps}
    kinds = {_white_box(name) for name in bounded}
    passed, skipped = [], []
    if any(len(by_eps) >= 2 for by_eps in bounded.values()):
        passed.append(f"{score} falls with ε")
    else:
        skipped.append("ε (no attack with an ε-ball at two ε values)")
    if "steps" in checks:
        passed.append(f"{score} falls with the attack's steps")
    else:
        skipped.append("steps (no iterative white-box attack, or the check was turned off)")
    if {True, False} <= kinds:
        passed.append("no black-box attack beats the white-box ones")
    else:
        skipped.append("black-box against white-box (not both kinds of bounded attack)")
    if "zero_gradient_samples" in checks:
        passed.append("input gradients are finite and non-zero")
    passed.append("the model is deterministic")
    listed = passed[0] if len(passed) == 1 else ", ".join(passed[:-1]) + " and " + passed[-1]
    text = "No warnings: " + listed + "."
    if skipped:
        text += " Not checked: " + "; ".join(skipped) + "."
    return text


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
        lines.append(no_warning_text(metrics["robust"], metrics.get("checks") or {}))
    lines += ["", "## Settings", "", *(f"- {k}: {v}" for k, v in (metrics.get("settings") or {}).items())]
    if command:
        lines += ["", "Reproduce:", "", f"    {command}"]
    return "\n".join(lines) + "\n"
