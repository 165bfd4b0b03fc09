"""Tables and Markdown reports of a generative VLM's robust evaluation
(:class:`vlalign.evaluation.vlm_robust.VLMRobustEvaluation`)."""

from __future__ import annotations

from vlalign.attacks.threat_model import format_eps
from vlalign.evaluation.vlm_robust import VLMRobustEvaluation
from vlalign.reporting.robust import no_warning_text
from vlalign.reporting.tables import markdown_table, percent


def _value(result: VLMRobustEvaluation, value: float) -> str:
    return percent(value) if result.task == "vqa" else f"{value:.3f}"


def vlm_robust_table(result: VLMRobustEvaluation) -> str:
    """Markdown table: clean, one row per attack and the worst case, one column per ε."""
    robust = result.robust()
    rows = [["clean", *([_value(result, result.clean)] * len(result.eps))]]
    rows += [[name, *(_value(result, by_eps[e]) if e in by_eps else "—" for e in result.eps)]
             for name, by_eps in robust.items()]
    worst = result.worst_case()
    attacked = {e for by_eps in robust.values() for e in by_eps}  # an ε no attack used has no worst case
    rows.append(["**worst case**", *(f"**{_value(result, worst[e])}**" if e in attacked else "—" for e in result.eps)])
    return markdown_table(["attack", *(f"ε = {format_eps(e)}" for e in result.eps)], rows)


def vlm_type_table(result: VLMRobustEvaluation) -> str:
    """Markdown table of exact match per question type: clean and worst case per ε (``vqa`` only)."""
    by_type = result.metrics()["by_type"]
    eps = [format_eps(e) for e in result.eps]
    rows = [[kind, percent(value), *(percent(by_type["worst_case"][e][kind]) for e in eps)]
            for kind, value in by_type["clean"].items()]
    return markdown_table(["question type", "clean", *(f"worst case ε = {e}" for e in eps)], rows)


def vlm_robust_report(result: VLMRobustEvaluation, title: str, command: str | None = None) -> str:
    """A Markdown report: the table(s), the gradient-masking warnings, settings and how to reproduce."""
    metric = "exact match of the greedy answer" if result.task == "vqa" else "CIDEr-D of the greedy caption"
    lines = [f"# {title}", "", f"Metric: {metric}, on {result.clean_scores.numel()} images; untargeted attacks on the "
             "vision input maximize the negative log-likelihood of the clean ground truth; the worst case takes per "
             "sample the lowest score over the bounded attacks.", "", vlm_robust_table(result), ""]
    if result.question_types is not None:
        lines += ["## Per question type", "", vlm_type_table(result), ""]
    lines += ["## Gradient-masking checks", ""]
    if result.warnings:
        lines += [f"- ⚠ {w}" for w in result.warnings]
    else:
        lines.append(no_warning_text(result.robust(), result.checks, "the score"))
    lines += ["", "## Settings", "", *(f"- {k}: {v}" for k, v in result.settings.items())]
    if command:
        lines += ["", "Reproduce:", "", f"    {command}"]
    return "\n".join(lines) + "\n"
