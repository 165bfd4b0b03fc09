"""The AdPO experiment's report: its results tables, the clean-vs-robust plot and the targets, rebuilt from a run
folder's ``metrics.json`` (``vlalign report``)."""

from __future__ import annotations

from pathlib import Path

from vlalign.evaluation.uncertainty import standard_error
from vlalign.experiments.adpo_eval import TARGETED_EPS
from vlalign.io import read_json
from vlalign.reporting.figures import save_figure
from vlalign.reporting.tables import markdown_table, percent


#: Every row's name in tables and plots, in the experiment's order (which also fixes its colour).
NAMES = {"original": "original encoder", "tecoa": "TeCoA", "fare": "FARE", "adpo_dpo": "AdPO (DPO)",
         "adpo_ipo": "AdPO (IPO)", "adpo_kto": "AdPO (KTO)", "adpo_simpo": "AdPO (SimPO)",
         "adpo_scheduled": "AdPO (DPO, scheduled λ)", "adpo_no_la": "AdPO (DPO, λ = 0)",
         "adpo_dpo_reference": "AdPO (DPO, pairs once on the reference, embedding attack)"}


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def results_table(rows: dict) -> str:
    """One Markdown row per encoder: clean, CIDEr-D, APGD at both ε, targeted success, seconds per step."""
    body = [[NAMES.get(r, r), percent(v["clean"]), f"{v['cider']:.3f}", percent(v["robust"]["2/255"]),
             percent(v["robust"]["4/255"]), percent(v["targeted_success"][TARGETED_EPS]), _seconds(v["step_seconds"])]
            for r, v in rows.items()]
    return markdown_table(["encoder", "clean exact match", "CIDEr-D", "APGD 2/255", "APGD 4/255",
                           "targeted success 4/255", "s / step"], body)


def _plot(metrics: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, t) for k, t in (("methods", "the trained VLM"), ("transfer", "transferred into the second VLM"))
              if metrics[k]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), sharey=True, squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for row, values in metrics[key].items():
            marker = "o" if row.startswith("adpo") else ("s" if row in ("tecoa", "fare") else "*")
            ax.scatter(values["clean"], values["robust"]["4/255"], s=70 if marker != "*" else 160, marker=marker,
                       color=f"C{list(NAMES).index(row) if row in NAMES else 9}", label=NAMES.get(row, row),
                       clip_on=False, zorder=3)  # a point at 0 sits on the axis, drawn whole
        if key == "methods":
            # the target check's two rows on their fresh questions: hollow, with ± one standard error
            for row, values in (metrics.get("confirm") or {}).items():
                ax.errorbar(values["clean"], values["robust"]["4/255"], xerr=standard_error(values["clean_scores"]),
                            yerr=standard_error(values["robust_scores"]), fmt="D", markersize=7, mfc="none",
                            color=f"C{list(NAMES).index(row) if row in NAMES else 9}", capsize=3,
                            label=f"{NAMES.get(row, row)}, target check (± 1 SE)")
        ax.set_title(f"Clean vs APGD 4/255 accuracy: {title}", fontsize=10)
        ax.set_xlabel("clean exact match")
        ax.grid(alpha=0.3)
        # Exact match is a rate: the axes start at 0 even when every point lies there (matplotlib's autoscale
        # would then centre them on it, down to -0.05).
        ax.set_xlim(left=0, right=max(ax.get_xlim()[1], 0.05))
        ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 0.05))
    axes[0][0].set_ylabel("exact match under APGD-CE, ε = 4/255")
    for ax in axes[0]:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return save_figure(fig, path)


def report_from_run(run_dir: str | Path) -> str:
    """The Markdown report of a finished run folder (rebuilt by ``vlalign report``)."""
    run_dir = Path(run_dir)
    metrics = read_json(run_dir / "metrics.json", ValueError, expect=dict)
    settings = metrics["settings"]
    figure = _plot(metrics, run_dir / "clean_vs_robust.png")
    loop = settings["loop"]
    # a run folder written before the per-family rates trained every row at the loop's one lr (recorded in "loop")
    rates = settings.get("lr")
    lr = (f"lr per family, chosen on validation questions: TeCoA {rates['tecoa']:g}, FARE {rates['fare']:g}, "
          f"AdPO {rates['adpo']:g}" if rates else f"lr {loop['lr']:g}")
    lines = [
        "# AdPO: preference-optimized vision encoders for a generative VLM",
        "",
        f"{'**Smoke run (--quick) on tiny random models: the numbers mean nothing.** ' if settings['quick'] else ''}"
        f"Every encoder is trained at ε = {settings['eps']} with ℓ∞ PGD-{settings['attack_steps']} for "
        f"{loop['steps']} steps of batch {loop['batch_size']} (AdamW, {lr}, seed {settings['seed']}); "
        f"TeCoA and FARE on the MiniCLIP ({settings['clip']}), AdPO on the VLM ({settings['vlm']}) from "
        f"{settings['data']['questions']} questions and {settings['data']['captions']} caption prompts (labels unused). "
        f"Evaluation on fresh images (seed {settings['eval']['seed']}): exact match on "
        f"{settings['eval']['questions']} questions, CIDEr-D on {settings['eval']['captions']} captions, APGD-CE "
        f"({settings['eval']['steps']} steps) on the first {settings['eval']['attack_questions']} questions, targeted "
        f"APGD on the first {settings['eval']['targeted']}.",
        "",
        f"## In the trained VLM ({settings['vlm']})",
        "",
        results_table(metrics["methods"]),
        "",
        *([f"## Transferred into the second VLM ({settings['transfer_vlm']}), decoder untouched", "",
           results_table(metrics["transfer"]), ""] if metrics["transfer"] else ["No transfer rows in this run.", ""]),
        f"![clean vs robust]({figure.name})",
        "",
        "## The target check",
        "",
        *_selection_lines(metrics),
        *_confirmation_lines(metrics),
        "",
        "## Targets",
        "",
        *_target_lines(metrics),
        "",
        "## Gradient-masking checks",
        "",
    ]
    warned = [(key, row, w) for key in ("methods", "transfer") for row, v in metrics[key].items() for w in v["warnings"]]
    lines += [f"- ⚠ {key}/{row}: {w}" for key, row, w in warned] or ["No warnings for any row."]
    total = settings["seconds"]["total"]
    lines += ["", f"Run time: {total:.0f} s.", ""]
    return "\n".join(lines)


def _points(value: float, se: float | None = None) -> str:
    return f"{100 * value:+.1f}" + (f" ± {100 * se:.1f}" if se is not None else "") + " points"


def _versus_fare(targets: dict) -> str:
    """The AdPO-vs-FARE target's sentence: on the confirmation questions (paired, ± one standard error) or the table."""
    verdict = f"**{'met' if targets['met_robust_and_clean'] else 'not met'}**"
    # a run written before the target check existed has only the table's differences, under the plain names
    robust = targets.get("robust_vs_fare_table", targets["robust_vs_fare"])
    clean = targets.get("clean_vs_fare_table", targets["clean_vs_fare"])
    table = f"robust accuracy at 4/255 vs FARE {_points(robust)}, clean {_points(clean)}"
    if targets.get("decided_on") != "confirmation":
        return f"on the table: {table} (targets ≥ +3 and ≥ −1): {verdict}."
    return (f"on the {targets['questions']:,} confirmation questions (paired, ± one standard error): robust accuracy at "
            f"4/255 vs FARE {_points(targets['robust_vs_fare'], targets['robust_vs_fare_se'])} (target ≥ +3), clean "
            f"vs FARE {_points(targets['clean_vs_fare'], targets['clean_vs_fare_se'])} (target ≥ −1): {verdict}. "
            f"(On the table's questions: {table}.)")


def _selection_lines(metrics: dict) -> list[str]:
    """How the best AdPO row was picked: its validation scores per row, or a note that the table picked it."""
    selection = metrics.get("selection")
    if not selection or selection["best"] is None:
        return []
    if selection["on"] != "validation":
        return ["The best AdPO row was picked on the table's questions (APGD 4/255, then clean).", ""]
    rows = [[NAMES.get(r, r) + (" ✓" if r == selection["best"] else ""), percent(v["clean"]), percent(v["robust"]),
             str(v["n"])] for r, v in selection["scores"].items()]
    return [f"The best AdPO row is picked on {selection['questions']:,} validation questions (seed "
            f"{selection['seed']}, neither the table's nor the check's), scored as the check scores (highest APGD-CE "
            "4/255 accuracy, ties by clean):", "",
            markdown_table(["AdPO row", "clean", "APGD 4/255", "questions"], rows), ""]


def _confirmation_lines(metrics: dict) -> list[str]:
    confirm = metrics.get("confirm") or {}
    if not confirm:
        return ["No target check in this run."]
    spec = metrics["settings"]["confirm"]
    rows = [[NAMES.get(r, r), percent(v["clean"]), percent(v["robust"]["4/255"]),
             f"± {100 * standard_error(v['robust_scores']):.1f} points", str(v["n"])] for r, v in confirm.items()]
    warned = [f"- ⚠ {row}: {w}" for row, v in confirm.items() for w in v["warnings"]]
    return [f"The best AdPO row and FARE, re-scored on {spec['questions']:,} fresh questions (seed "
            f"{spec['seed']}, not the table's), every clean-correct one attacked by APGD-CE at 4/255:", "",
            markdown_table(["encoder", "clean", "APGD 4/255", "standard error", "questions"], rows), "", *warned]


def _picked_on(metrics: dict) -> str:
    selection = metrics.get("selection")
    if selection and selection["on"] == "validation":
        return f"by APGD 4/255 on {selection['questions']:,} validation questions"
    return "by APGD 4/255 in the table"


def _target_lines(metrics: dict) -> list[str]:
    targets = metrics["targets"]
    workers = metrics["settings"].get("workers", 1)
    if targets.get("best_adpo") is None:
        return ["No AdPO row in this run."]
    precompute = max((v.get("precompute_seconds") or 0.0) for v in metrics["methods"].values())
    retention = targets["transfer_retention"]
    ratio, amortized = targets["step_cost_vs_fare"], targets.get("step_cost_vs_fare_amortized")
    return [
        f"- Best AdPO variant ({_picked_on(metrics)}): **{NAMES[targets['best_adpo']]}**; "
        + _versus_fare(targets),
        "- Transfer keeps " + (f"**{100 * retention:.0f}%**" if retention is not None else
                               "— (no transfer rows, or no robustness gain to keep)")
        + " of the best AdPO encoder's robustness gain over the original (target ≥ 80%).",
        "- AdPO step / FARE step (same encoder, batch and loop): " + (f"**{ratio:.2f}×**" if ratio else "—")
        + " (target ≤ 2.5×). What AdPO precomputes (y_w and its reference log-prob; with pairs on the reference "
        "also PGD, y_l and its log-prob) is computed once before training (at most "
        f"{precompute:.1f} s, shared by the rows of one attack mode); spread over one row's steps the ratio is "
        + (f"{amortized:.2f}×" if amortized else "—") + ". Step times are wall-clock"
        + (f", {workers} rows training at once in separate processes (one torch thread each)." if workers > 1 else "."),
    ]
