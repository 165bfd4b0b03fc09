"""Table 1 of the contrastive-PO paper in the mini world (``vlalign experiment typographic``).

Rows: the pretrained MiniCLIP, cross-entropy fine-tuning, PAINT, Materzynska et al., Defense-Prefix, and DPO /
IPO / KTO on the full image tower. Columns: clean, typographic and non-reading-control accuracy on the eight
in-domain classes used for preference training and on the four held-out classes never seen there, plus the KL of
each model's clean-image policy from the pretrained one. The non-reading control writes random letters in the
typographic words' boxes, so control − typographic (the *reading effect*) is what reading the word costs, apart
from occlusion. The pretrained model's linear object probe on frozen typographic features is reported too. Also: BMA vs EMA for the PO methods (Table 5), the Σ^t sweep of a linear-head DPO
run (Fig. 2) and a β sweep of KL_clean (Fig. 5b).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from vlalign.data.mini_world import INDOMAIN_CLASSES, MiniWorld  # noqa: E402
from vlalign.data.preference import PreferenceSet, RegularizationSet, typographic_preference_data  # noqa: E402
from vlalign.evaluation.control import is_monotonic  # noqa: E402
from vlalign.evaluation.probe import object_probe  # noqa: E402
from vlalign.evaluation.typographic import evaluate_typographic  # noqa: E402
from vlalign.evaluation.zero_shot import zero_shot_evaluate  # noqa: E402
from vlalign.experiments.control import control_sweep, plot_frontier, plot_singular_values  # noqa: E402
from vlalign.models.base import ContrastiveModel  # noqa: E402
from vlalign.io import atomic_write_json  # noqa: E402
from vlalign.models.loading import load_model  # noqa: E402
from vlalign.reporting.figures import save_figure  # noqa: E402
from vlalign.reporting.run_report import run_info, write_report  # noqa: E402
from vlalign.reporting.tables import markdown_table, percent  # noqa: E402
from vlalign.training.methods.baselines import train_defense_prefix, train_materzynska  # noqa: E402
from vlalign.training.methods.preference import PreferenceConfig, train_preference  # noqa: E402
from vlalign.training.paint import paint  # noqa: E402
from vlalign.training.train_config import TrainConfig  # noqa: E402

PO_METHODS = ("dpo", "ipo", "kto")
ROW_ORDER = ("pretrained", "ce", "paint", "materzynska", "defense_prefix", "dpo", "ipo", "kto")
ROW_NAMES = {"pretrained": "Pretrained", "ce": "CE fine-tuning", "paint": "PAINT", "materzynska": "Materzynska+",
             "defense_prefix": "Defense-Prefix", "dpo": "DPO", "ipo": "IPO", "kto": "KTO"}


@dataclass(frozen=True)
class TypographicSizes:
    """Data and training sizes; ``quick`` shrinks everything for a smoke run."""

    n_pref: int = 2000
    n_reg: int = 2000
    n_eval: int = 600
    n_val: int = 300
    steps: int = 300
    head_steps: int = 300
    batch_size: int = 64
    head_batch_size: int = 128
    betas: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)
    control_t: tuple[float, ...] = tuple(x / 2 for x in range(-8, 9))
    probe_train: int = 2400
    probe_test: int = 1200

    @classmethod
    def quick(cls) -> "TypographicSizes":
        return cls(n_pref=96, n_reg=96, n_eval=48, n_val=48, steps=4, head_steps=10, batch_size=16, head_batch_size=32,
                   betas=(0.5, 2.0), control_t=(-1.0, 0.0, 1.0), probe_train=96, probe_test=48)


#: Per-method settings. IPO and KTO use the paper's (β, λ). For DPO the paper's β=1 saturates early here: the
#: written word leads the true class by several logits, and σ(−βh) stops pushing once h≈3/β; a GPU sweep on the
#: mini world (β ∈ {0.3, 1}, lr ∈ {5e-4, 1e-3}, 300/800 steps) gave typographic 0.52 at β=1 and 0.64 at β=0.3 with
#: the same clean accuracy, so β=0.3 (λ=1). DPO's regularizer is the reverse KL(π_ref‖π_θ): a comparison fixed in
#: advance over eight validation draws (``benchmarks.typographic_variant``, seeds 10-17, README) kept clean accuracy
#: on the held-out classes closer to the pretrained model's (−0.5 vs −1.1 points) at the same typographic accuracy.
#: Learning rate and steps are for the full image tower.
PO_SETTINGS = {
    "dpo": {"beta": 0.3, "lam": 1.0, "kl_direction": "ref_policy"},
    "ipo": {"beta": 0.01, "lam": 0.01},
    "kto": {"beta": 1.5, "lam": 0.01},
}
FULL_LR = 5e-4


class TypographicInputs(NamedTuple):
    """What every row of one run shares: its sizes, the mini world, the shipped ``mini`` (the reference every row
    starts from) and the preference triplets with their clean regularization images."""

    sizes: TypographicSizes
    world: MiniWorld
    reference: ContrastiveModel
    pref: PreferenceSet
    reg: RegularizationSet


def experiment_inputs(seed: int, quick: bool = False) -> TypographicInputs:
    """The inputs of ``vlalign experiment typographic --seed seed`` (``--quick`` sizes if ``quick``), built as the
    experiment builds them (it seeds torch's global generator with ``seed`` first), so that a row trained from them
    alone reproduces the experiment's."""
    sizes = TypographicSizes.quick() if quick else TypographicSizes()
    torch.manual_seed(seed)
    world = MiniWorld()
    reference = load_model("mini")
    pref, reg = preference_sets(sizes, seed, world)
    return TypographicInputs(sizes, world, reference, pref, reg)


def preference_sets(sizes: TypographicSizes, seed: int, world: MiniWorld):
    """The experiment's preference triplets and clean regularization images for ``--seed seed`` (data seed 100 + seed,
    in-domain classes only)."""
    return typographic_preference_data(sizes.n_pref, sizes.n_reg, seed=100 + seed, classes=INDOMAIN_CLASSES,
                                       world=world)


def full_tower_loop(sizes: TypographicSizes, seed: int) -> TrainConfig:
    """The loop of the full-tower rows: BMA written into the model, EMA kept as the alternate (Table 5)."""
    return TrainConfig(steps=sizes.steps, batch_size=sizes.batch_size, lr=FULL_LR, seed=seed, averaging="bma",
                       extra_averaging=["ema"])


#: The experiment's test draw is seed TEST_DRAW_OFFSET + its seed (600 fresh images per split).
TEST_DRAW_OFFSET = 5000


def head_dpo_config() -> PreferenceConfig:
    """The linear-head DPO row's objective: the method's defaults (β = λ = 1, KL(π_θ‖π_ref)) on a head W = UΣVᵀ."""
    return PreferenceConfig(method="dpo", trainable="head")


def head_loop(sizes: TypographicSizes, seed: int) -> TrainConfig:
    """The loop of the linear rows: Materzynska+ and Defense-Prefix train with it as it is, the linear-head DPO
    with BMA added (:func:`head_dpo_loop`)."""
    return TrainConfig(steps=sizes.head_steps, batch_size=sizes.head_batch_size, seed=seed)


def head_dpo_loop(sizes: TypographicSizes, seed: int) -> TrainConfig:
    """The loop of the linear-head DPO row (and its β sweep): :func:`head_loop` with BMA."""
    return replace(head_loop(sizes, seed), averaging="bma")


def _validation_score(world: MiniWorld, n: int, seed: int):
    clean = world.sample("indomain-clean", n, seed)
    typo = world.sample("indomain-typographic", n, seed)

    def score(model: ContrastiveModel) -> float:
        return 0.5 * (zero_shot_evaluate(model, clean).accuracy + zero_shot_evaluate(model, typo).accuracy)

    return score


def run_typographic_experiment(out: str | Path, quick: bool = False, seed: int = 0) -> dict:
    """Train every method on the same preference data, evaluate on fresh seeds, write the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    sizes, world, reference, pref, reg = experiment_inputs(seed, quick)
    eval_seed = TEST_DRAW_OFFSET + seed
    evaluate = lambda model: evaluate_typographic(model, reference, sizes.n_eval, eval_seed, world)  # noqa: E731
    methods: dict[str, dict] = {}
    seconds: dict[str, float] = {}

    def timed(name: str, fn):
        start = time.perf_counter()
        result = fn()
        seconds[name] = time.perf_counter() - start
        print(f"[typographic] {name}: {seconds[name]:.0f} s", flush=True)
        return result

    def record(name: str, model: ContrastiveModel) -> None:
        # Evaluate as soon as a model exists and keep a partial file, so an interrupted run still reports.
        methods[name] = evaluate(model)
        atomic_write_json(out / "metrics.partial.json", {"methods": methods, "seconds": seconds})

    record("pretrained", reference)
    probe_seeds = (7100 + seed, 7200 + seed)
    probe = timed("linear_probe", lambda: object_probe(reference, world, n_train=sizes.probe_train,
                                                       n_test=sizes.probe_test, train_seed=probe_seeds[0],
                                                       test_seed=probe_seeds[1]))
    linear_probe = {**{split: row["probe"] for split, row in probe.items()}, "n_train": sizes.probe_train,
                    "n_test": sizes.probe_test, "train_seed": probe_seeds[0], "test_seed": probe_seeds[1]}
    train = full_tower_loop(sizes, seed)
    ce = timed("ce", lambda: train_preference(reference, pref, reg, PreferenceConfig(method="ce", trainable="full"),
                                              replace(train, extra_averaging=[]), progress=False))
    record("ce", ce.model)
    painted = timed("paint", lambda: paint(reference, ce.model, [i / 10 for i in range(11)],
                                           _validation_score(world, sizes.n_val, 4000 + seed)))
    record("paint", painted.model)
    head_train = head_loop(sizes, seed)
    record("materzynska", timed("materzynska", lambda: train_materzynska(reference, pref, reg, head_train)))
    record("defense_prefix", timed("defense_prefix", lambda: train_defense_prefix(reference, pref, reg, head_train)))
    ema: dict[str, dict] = {}
    for method in PO_METHODS:
        cfg = PreferenceConfig(method=method, trainable="full", **PO_SETTINGS[method])
        result = timed(method, lambda: train_preference(reference, pref, reg, cfg, train, progress=False))
        record(method, result.model)
        ema[method] = evaluate(result.alternates["ema"])

    head_cfg = head_dpo_config()
    head_dpo_train = head_dpo_loop(sizes, seed)
    head = timed("dpo_head", lambda: train_preference(reference, pref, reg, head_cfg, head_dpo_train,
                                                      progress=False)).model
    control = control_sweep(head, world, sizes.control_t, sizes.n_eval, eval_seed)
    beta_sweep = {"beta": list(sizes.betas), "kl_clean": [], "typographic": []}
    for beta in sizes.betas:
        row = evaluate(train_preference(reference, pref, reg, replace(head_cfg, beta=beta), head_dpo_train,
                                        progress=False).model)
        beta_sweep["kl_clean"].append(row["kl_clean"])
        beta_sweep["typographic"].append(row["typographic"])

    summary = _summary(methods, control)
    metrics = {"methods": {m: methods[m] for m in ROW_ORDER}, "control": control, "linear_probe": linear_probe,
               "bma_vs_ema": {m: {"bma": methods[m], "ema": ema[m]} for m in PO_METHODS},
               "beta_sweep": beta_sweep, "paint_alpha": painted.alpha,
               "head_dpo": {"orthogonality_error": head.head.orthogonality_error(), **evaluate(head)},
               "summary": summary, "seconds": seconds,
               "settings": {"sizes": asdict(sizes), "po": PO_SETTINGS, "full_lr": FULL_LR, "seed": seed,
                            "eval_seed": eval_seed, "quick": quick}}
    atomic_write_json(out / "metrics.json", metrics)
    (out / "metrics.partial.json").unlink(missing_ok=True)
    _plots(methods, control, beta_sweep, head, out)
    write_report(out, "experiment-typographic", _report(metrics),
                 run_info(command=_command(quick, seed), seconds=time.perf_counter() - began))
    print(_methods_table(methods))
    print(_methods_table(methods, "_heldout"))
    return metrics


def _command(quick: bool, seed: int) -> str:
    return f"vlalign experiment typographic --out DIR{' --quick' if quick else ''}{f' --seed {seed}' if seed else ''}"


def report_from_run(run_dir: str | Path) -> str:
    """The Markdown report of a finished run folder, from its ``metrics.json``."""
    return _report(json.loads((Path(run_dir) / "metrics.json").read_text()))


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


def _summary(methods: dict, control: dict) -> dict:
    best_po = best_po_method(methods)
    baselines = ("ce", "paint", "materzynska", "defense_prefix")
    best_base = max(baselines, key=lambda m: methods[m]["typographic"])
    po, pre = methods[best_po], methods["pretrained"]
    return {
        "best_po": best_po, "best_baseline": best_base,
        "gap_closed": gap_closed(po, pre), "gap_closed_heldout": gap_closed(po, pre, "_heldout"),
        "written_label_rate_monotonic_on_target_range": monotone_on(control),
        "monotone_t_range": list(MONOTONE_T_RANGE),
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


def _methods_table(methods: dict, suffix: str = "") -> str:
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


def _plots(methods: dict, control: dict, beta_sweep: dict, head, out: Path) -> None:
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


def _po_settings_text(po: dict) -> str:
    """Each full-tower PO method's (β, λ) and KL direction, as the run recorded them (a run from before the field
    recorded none: it used the default, KL(π_θ‖π_ref))."""
    kl = {"policy_ref": "KL(π_θ‖π_ref)", "ref_policy": "KL(π_ref‖π_θ)"}
    return "; ".join(f"{ROW_NAMES[m]} β = {v['beta']}, λ = {v['lam']}, {kl[v.get('kl_direction', 'policy_ref')]}"
                     for m, v in po.items())


def _report(metrics: dict) -> str:
    methods, s = metrics["methods"], metrics["summary"]
    if "gap_closed" not in s:  # a run written before the best PO method had to keep clean accuracy: summarize anew
        s = _summary(methods, metrics["control"])
    sizes = TypographicSizes(**{k: tuple(v) if isinstance(v, list) else v for k, v in metrics["settings"]["sizes"].items()})
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

Reproduce: `{_command(metrics['settings'].get('quick', False), metrics['settings']['seed'])}`.{quick} Preference data: {sizes.n_pref}
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

{_methods_table(methods)}

Held-out classes (moon, diamond, hexagon, bolt):

{_methods_table(methods, "_heldout")}

![Table 1](table1.png)

Best PO method (the most typographic-robust within {100 * CLEAN_TOLERANCE:.0f} point of the pretrained clean accuracy):
**{ROW_NAMES[s['best_po']]}**, closing {100 * s['gap_closed']:.1f}% of the gap to clean ({100 * s['gap_closed_heldout']:.1f}%
held-out) — typographic {percent(methods[s['best_po']]['typographic'])} vs clean
{percent(methods[s['best_po']]['clean'])} (gap {100 * s['clean_minus_typographic']:.1f} points; held-out gap
{100 * s['clean_minus_typographic_heldout']:.1f}); clean drop {100 * s['clean_drop']:.1f} points (held-out
{100 * s['clean_drop_heldout']:.1f}); KL_clean {s['kl_ratio_to_ce']:.2f}× CE's; {100 * s['margin_over_best_baseline']:+.1f}
points typographic over the best baseline ({ROW_NAMES[s['best_baseline']]}). Reading effect: {_points(s['reading_effect'])}
points in-domain, {_points(s['reading_effect_heldout'])} held-out (pretrained: {_points(s['reading_effect_pretrained'])}
and {_points(s['reading_effect_pretrained_heldout'])}).

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
{MONOTONE_TOLERANCE:g}): {s['written_label_rate_monotonic_on_target_range']}.

{markdown_table(["t", "clean", "typographic", "written-label rate", "non-reading", "reading effect (pt)"], control_rows)}

![frontier](frontier.png) ![singular values](singular_values.png)

## β sweep, linear-head DPO (Fig. 5b)

{markdown_table(["β", "KL_clean", "typographic"], beta_rows)}

![beta sweep](beta_sweep.png)
"""
