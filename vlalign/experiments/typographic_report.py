"""The tables, figures of merit, plots and report of ``vlalign experiment typographic`` (Table 1 in the mini world),
built from a run's metrics, so that ``vlalign report RUN_DIR`` rebuilds the report from ``metrics.json`` alone."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vlalign.evaluation.control import is_monotonic  # noqa: E402
from vlalign.experiments.control import plot_frontier, plot_singular_values  # noqa: E402
from vlalign.io import read_json  # noqa: E402
from vlalign.reporting.figures import save_figure  # noqa: E402
from vlalign.reporting.tables import markdown_table, percent  # noqa: E402

PO_METHODS = ("dpo", "ipo", "kto")
BASELINES = ("ce", "paint", "materzynska", "defense_prefix")
ROW_ORDER = ("pretrained", "ce", "paint", "materzynska", "defense_prefix", "dpo", "ipo", "kto")
ROW_NAMES = {"pretrained": "Pretrained", "ce": "CE fine-tuning", "paint": "PAINT", "materzynska": "Materzynska+",
             "defense_prefix": "Defense-Prefix", "dpo": "DPO", "ipo": "IPO", "kto": "KTO"}


def command(quick: bool, seed: int) -> str:
    return f"vlalign experiment typographic --out DIR{' --quick' if quick else ''}{f' --seed {seed}' if seed else ''}"


def report_from_run(run_dir: str | Path) -> str:
    """The Markdown report of a finished run folder, from its ``metrics.json``."""
    return report_text(read_json(Path(run_dir) / "metrics.json", ValueError, expect=dict))


#: Issue 13's target range of the Σ^t sweep, and how far a step may go the wrong way and still count as monotone.
MONOTONE_T_RANGE = (-2.0, 3.0)
MONOTONE_TOLERANCE = 0.01
#: The best PO method is the most typographic-robust one that keeps clean accuracy within this of the pretrained.
CLEAN_TOLERANCE = 0.01


def best_po_method(methods: dict, clean_tolerance: float = CLEAN_TOLERANCE) -> str:
    """The PO method with the highest in-domain typographic accuracy among those whose in-domain clean accuracy is
    within ``clean_tolerance`` of the pretrained model's (all PO methods if none is)."""
    floor = methods["pretrained"]["clean"] - clean_tolerance
    keeping = [m for m in PO_METHODS if methods[m]["clean"] >= floor] or list(PO_METHODS)
    return max(keeping, key=lambda m: methods[m]["typographic"])


def gap_closed(row: dict, pretrained: dict, suffix: str = "") -> float:
    """The fraction of the pretrained model's gap to clean (clean − typographic) that ``row`` closes:
    (typographic_row − typographic_pretrained) / (clean_pretrained − typographic_pretrained)."""
    gap = pretrained[f"clean{suffix}"] - pretrained[f"typographic{suffix}"]
    return (row[f"typographic{suffix}"] - pretrained[f"typographic{suffix}"]) / gap if gap > 0 else float("nan")


def values_on(control: dict, key: str = "written_label_rate", t_range: tuple[float, float] = MONOTONE_T_RANGE
              ) -> list[float]:
    """``control[key]`` at the sweep's t within ``t_range`` (inclusive), in the sweep's order."""
    return [v for t, v in zip(control["t"], control[key]) if t_range[0] <= t <= t_range[1]]


def monotone_on(control: dict, key: str = "written_label_rate", t_range: tuple[float, float] = MONOTONE_T_RANGE,
                tolerance: float = MONOTONE_TOLERANCE) -> bool:
    """Whether ``control[key]`` is monotone (each step within ``tolerance``) over the sweep's t in ``t_range``."""
    return is_monotonic(values_on(control, key, t_range), tolerance)


def _covered(control: dict) -> list[float] | None:
    """[lowest, highest] swept t inside :data:`MONOTONE_T_RANGE` (None when the sweep has none there)."""
    inside = [t for t in control["t"] if MONOTONE_T_RANGE[0] <= t <= MONOTONE_T_RANGE[1]]
    return [min(inside), max(inside)] if inside else None


def summarize(methods: dict, control: dict, validation: dict | None = None) -> dict:
    """The headline figures, read on the test draw (``methods``) for the best PO method and the best baseline as
    chosen on ``validation`` (each row's in-domain ``clean`` and ``typographic`` accuracy on the validation draw;
    without it, on the test rows themselves)."""
    chooser = validation if validation is not None else methods
    best_po = best_po_method(chooser)
    best_base = max(BASELINES, key=lambda m: chooser[m]["typographic"])
    po, pre = methods[best_po], methods["pretrained"]
    return {
        "best_po": best_po, "best_baseline": best_base,
        "selected_on": "validation" if validation is not None else "test",
        "gap_closed": gap_closed(po, pre), "gap_closed_heldout": gap_closed(po, pre, "_heldout"),
        "written_label_rate_monotonic_on_target_range": monotone_on(control),
        "monotone_t_range": list(MONOTONE_T_RANGE),
        # The t of the sweep inside that range: a short (quick) sweep covers only part of it.
        "monotone_t_covered": _covered(control),
        "typographic_gain": po["typographic"] - pre["typographic"],
        "clean_drop": pre["clean"] - po["clean"],
        "clean_minus_typographic": po["clean"] - po["typographic"],
        "clean_minus_typographic_heldout": po["clean_heldout"] - po["typographic_heldout"],
        "clean_drop_heldout": pre["clean_heldout"] - po["clean_heldout"],
        "kl_ratio_to_ce": po["kl_clean"] / max(methods["ce"]["kl_clean"], 1e-12),
        "margin_over_best_baseline": po["typographic"] - methods[best_base]["typographic"],
        "written_label_rate_monotonic_in_t": is_monotonic(control["written_label_rate"]),
        "reading_effect": reading_effect(po), "reading_effect_heldout": reading_effect(po, "_heldout"),
        "reading_effect_pretrained": reading_effect(pre),
        "reading_effect_pretrained_heldout": reading_effect(pre, "_heldout"),
    }


def reading_effect(row: dict, suffix: str = "") -> float:
    """Non-reading control accuracy − typographic accuracy: what reading the written word costs, beyond the
    occlusion and clutter the control shares with the typographic images."""
    return row[f"nonreading{suffix}"] - row[f"typographic{suffix}"]


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def methods_table(methods: dict, suffix: str = "") -> str:
    """One row per method on the in-domain (``suffix`` "") or held-out (``"_heldout"``) classes: clean,
    typographic and non-reading accuracy, the gap to clean and the reading effect beside it (in points)."""
    rows = []
    for m in ROW_ORDER:
        row = methods[m]
        cells = [ROW_NAMES[m], percent(row[f"clean{suffix}"]), percent(row[f"typographic{suffix}"]),
                 percent(row[f"nonreading{suffix}"]), _points(row[f"clean{suffix}"] - row[f"typographic{suffix}"]),
                 _points(reading_effect(row, suffix))]
        rows.append(cells + ([f"{row['kl_clean']:.4f}"] if not suffix else []))
    where = "held-out" if suffix else "in-domain"
    headers = ["method", f"clean ({where})", f"typographic ({where})", f"non-reading ({where})",
               "gap to clean (pt)", "reading effect (pt)"]
    return markdown_table(headers + (["KL_clean"] if not suffix else []), rows)


def write_plots(methods: dict, control: dict, beta_sweep: dict, head, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 4))
    xs = range(len(ROW_ORDER))
    for offset, key, label in ((-0.32, "clean", "clean"), (-0.16, "typographic", "typographic"),
                               (0.0, "nonreading", "non-reading control"),
                               (0.16, "clean_heldout", "clean, held-out"), (0.32, "typographic_heldout", "typographic, held-out")):
        ax.bar([x + offset for x in xs], [methods[m][key] for m in ROW_ORDER], width=0.16, label=label)
    ax.set_xticks(list(xs), [ROW_NAMES[m] for m in ROW_ORDER], rotation=20)
    ax.set_ylabel("zero-shot accuracy")
    ax.set_ylim(0, 1)
    # Above the axes: inside, any placement covers bars (every method has one near 0.9 and one near 0.2).
    ax.legend(fontsize=8, ncol=5, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.set_title("Table 1 in the mini world: zero-shot accuracy per method", pad=24)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out / "table1.png", dpi=120)
    plot_frontier(control, out / "frontier.png")
    plot_singular_values(head, out / "singular_values.png")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(beta_sweep["beta"], beta_sweep["kl_clean"], marker="o")
    ax.set_xscale("log")
    ax.set_xlabel("β (linear-head DPO)")
    ax.set_ylabel("KL_clean to the reference")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "beta_sweep.png", dpi=120)
    plt.close(fig)


def _choice_rule(metrics: dict) -> str:
    """How the best PO method was chosen, for the report's sentence."""
    where = "on the validation draw" if metrics["summary"].get("selected_on") == "validation" else "on the test draw"
    return (f"chosen {where}: the most typographic-robust there within {100 * CLEAN_TOLERANCE:.0f} point of the "
            "pretrained clean accuracy; its figures below are the test draw's")


def _coverage_note(metrics: dict) -> str:
    """" (swept only t ∈ [a, b] of that range)" when the sweep did not reach both ends of the target range."""
    summary = metrics["summary"]
    # A folder from before the field existed: the sweep's own t give it.
    covered = summary["monotone_t_covered"] if "monotone_t_covered" in summary else _covered(metrics["control"])
    if covered is None:
        return " (no swept t lies in that range)"
    if covered == summary["monotone_t_range"]:
        return ""
    return f" (this sweep covers only t ∈ [{covered[0]:g}, {covered[1]:g}] of that range)"


def _selection_note(metrics: dict) -> str:
    """Where the best PO method and the best baseline were chosen (a folder from before this was recorded chose
    them on the test draw)."""
    if metrics["summary"].get("selected_on") != "validation":
        return " (Both were chosen on the test draw itself: this run predates the validation choice.)"
    val = metrics["validation"]
    return (f" Both were chosen on a validation draw (seed {val['seed']}, {val['n']} in-domain clean and "
            f"{val['n']} typographic images), then read on the test draw above.")


def _po_settings_text(po: dict) -> str:
    """Each full-tower PO method's (β, λ) and KL direction, as the run recorded them (a run from before the field
    recorded none: it used the default, KL(π_θ‖π_ref))."""
    kl = {"policy_ref": "KL(π_θ‖π_ref)", "ref_policy": "KL(π_ref‖π_θ)"}
    return "; ".join(f"{ROW_NAMES[m]} β = {v['beta']}, λ = {v['lam']}, {kl[v.get('kl_direction', 'policy_ref')]}"
                     for m, v in po.items())


def report_text(metrics: dict) -> str:
    methods, s = metrics["methods"], metrics["summary"]
    if "gap_closed" not in s:  # a run written before the best PO method had to keep clean accuracy: summarize anew
        s = summarize(methods, metrics["control"])
    sizes = SimpleNamespace(**metrics["settings"]["sizes"])
    probe = metrics["linear_probe"]
    ema_rows = [[ROW_NAMES[m], percent(metrics["bma_vs_ema"][m]["bma"]["clean"]), percent(metrics["bma_vs_ema"][m]["ema"]["clean"]),
                 percent(metrics["bma_vs_ema"][m]["bma"]["typographic"]), percent(metrics["bma_vs_ema"][m]["ema"]["typographic"]),
                 percent(metrics["bma_vs_ema"][m]["bma"]["typographic_heldout"]), percent(metrics["bma_vs_ema"][m]["ema"]["typographic_heldout"])]
                for m in PO_METHODS]
    control = metrics["control"]
    control_rows = [[t, percent(c), percent(ty), percent(w), percent(nr), _points(nr - ty)] for t, c, ty, w, nr in
                    zip(control["t"], control["clean"], control["typographic"], control["written_label_rate"],
                        control["nonreading"])]
    beta_rows = [[b, f"{k:.4f}", percent(t)] for b, k, t in zip(metrics["beta_sweep"]["beta"], metrics["beta_sweep"]["kl_clean"],
                                                              metrics["beta_sweep"]["typographic"])]
    quick = " **Quick sizes: a smoke run, not a result.**" if metrics["settings"].get("quick") else ""
    return f"""# Typographic attacks: contrastive-PO Table 1 in the mini world

Reproduce: `{command(metrics['settings'].get('quick', False), metrics['settings']['seed'])}`.{quick} Preference data: {sizes.n_pref}
typographic images of the 8 in-domain classes (words also from those classes) with (true class ≻ written class);
regularization: {sizes.n_reg} clean in-domain images. Evaluation: {sizes.n_eval} fresh images per split (seed
{metrics['settings']['eval_seed']}), classification among all 12 classes; held-out = moon, diamond, hexagon, bolt,
never seen in preference training. Full image tower, {sizes.steps} steps of batch {sizes.batch_size}, Adamax, warm-up
10% + cosine, BMA (γ=0.7). PAINT α = {metrics['paint_alpha']} (chosen on a validation split). PO objectives:
{_po_settings_text(metrics['settings']['po'])}.

Non-reading control: the typographic images' scenes, with random letters (no class name, no word of the
vocabulary, as long as the class name) in the same boxes, fonts, sizes and colours. **Reading effect** = control −
typographic accuracy: what the model loses because of what the word *says*; the rest of the gap to clean is
occlusion and clutter.

In-domain classes (those of the preference data):

{methods_table(methods)}

Held-out classes (moon, diamond, hexagon, bolt):

{methods_table(methods, "_heldout")}

![Table 1](table1.png)

Best PO method ({_choice_rule(metrics)}):
**{ROW_NAMES[s['best_po']]}**, closing {100 * s['gap_closed']:.1f}% of the gap to clean ({100 * s['gap_closed_heldout']:.1f}%
held-out) — typographic {percent(methods[s['best_po']]['typographic'])} vs clean
{percent(methods[s['best_po']]['clean'])} (gap {100 * s['clean_minus_typographic']:.1f} points; held-out gap
{100 * s['clean_minus_typographic_heldout']:.1f}); clean drop {100 * s['clean_drop']:.1f} points (held-out
{100 * s['clean_drop_heldout']:.1f}); KL_clean {s['kl_ratio_to_ce']:.2f}× CE's; {100 * s['margin_over_best_baseline']:+.1f}
points typographic over the best baseline ({ROW_NAMES[s['best_baseline']]}). Reading effect: {_points(s['reading_effect'])}
points in-domain, {_points(s['reading_effect_heldout'])} held-out (pretrained: {_points(s['reading_effect_pretrained'])}
and {_points(s['reading_effect_pretrained_heldout'])}).{_selection_note(metrics)}

## Linear probe of the object (pretrained model)

A multinomial logistic regression on the pretrained model's frozen image embeddings, trained on {probe['n_train']}
images (seed {probe['train_seed']}) and tested on {probe['n_test']} others (seed {probe['test_seed']}), 12 classes:
typographic {percent(probe['typographic'])}, clean {percent(probe['clean'])}, non-reading control
{percent(probe['nonreading'])}. (`vlalign probe --model mini --out DIR` measures the same for any model.)

## BMA vs EMA (Table 5)

{markdown_table(["method", "clean BMA", "clean EMA", "typo BMA", "typo EMA", "typo held-out BMA", "typo held-out EMA"], ema_rows)}

## Σ^t control of a linear-head DPO run (Fig. 2)

‖WᵀW − I‖_F = {metrics['head_dpo']['orthogonality_error']:.3f}. Written-label rate monotonic in t over the whole sweep:
{s['written_label_rate_monotonic_in_t']}; over t ∈ [{s['monotone_t_range'][0]:g}, {s['monotone_t_range'][1]:g}] (each step within
{MONOTONE_TOLERANCE:g}): {s['written_label_rate_monotonic_on_target_range']}{_coverage_note(metrics)}.

{markdown_table(["t", "clean", "typographic", "written-label rate", "non-reading", "reading effect (pt)"], control_rows)}

![frontier](frontier.png) ![singular values](singular_values.png)

## β sweep, linear-head DPO (Fig. 5b)

{markdown_table(["β", "KL_clean", "typographic"], beta_rows)}

![beta sweep](beta_sweep.png)
"""
