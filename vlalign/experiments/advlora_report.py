"""The report of ``vlalign experiment advlora`` and of its val selection, from their ``metrics.json`` alone: the
plots (``alpha.png``, ``rank_sweep.png``, ``robustness.png``), the Markdown tables and the targets' wording, so that
``vlalign report RUN_DIR`` rebuilds them without the experiment's code; and the targets and gradient-masking checks
the run computes from its rows' metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlalign.io import read_json
from vlalign.reporting.figures import save_figure
from vlalign.reporting.tables import markdown_table, percent

NAMES = {"pretrained": "pretrained (no fine-tuning)", "full_clean": "full FT, clean", "full_adversarial": "full FT, adversarial",
         "lora_clean": "LoRA, clean", "lora_adversarial": "LoRA, adversarial", "advlora": "AdvLoRA",
         "advlora_no_cluster_init": "AdvLoRA − clustering init", "advlora_no_alignment": "AdvLoRA − alignment",
         "advlora_no_adaptive_alpha": "AdvLoRA − adaptive α"}
CONDITIONS = ("clean", "pgd", "fgsm", "transfer")


def write_plots(metrics: dict[str, Any], out: Path) -> None:
    """``alpha.png`` (mean α over training), ``rank_sweep.png`` (mR against rank) and ``robustness.png``."""
    import matplotlib.pyplot as plt

    alpha = metrics["alpha"]
    if alpha:
        fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")  # α near 1 needs wide tick labels
        for name, series in alpha.items():
            label = NAMES[name] if name in NAMES else "AdvLoRA r = " + name.rsplit("_r", 1)[1]
            main = name == "advlora"  # drawn wide and on top: an ablation with nearly the same α would hide it
            ax.plot(series["step"], series["alpha_mean"], label=label, linestyle="-" if name in NAMES else ":",
                    linewidth=3.0 if main else 1.5, zorder=3 if main else 2, alpha=0.6 if main else 1.0)
        ax.set_xlabel("step")
        ax.set_ylabel("mean α over adapted layers")
        ax.set_title("AdvLoRA's adaptive scale α during training")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        save_figure(fig, out / "alpha.png")
    sweep = metrics["rank_sweep"]
    ranks = [int(r) for r in sweep]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("clean", "clean mR"), ("pgd", f"PGD-{metrics['settings']['eval_steps']} mR")):
        ax.plot(ranks, [100 * sweep[str(r)][key]["mR"] for r in ranks], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.set_xlabel("LoRA rank r")
    ax.set_ylabel("mR (%)")
    ax.set_ylim(0, 100)
    ax.set_title("AdvLoRA: mR against rank (test gallery)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out / "rank_sweep.png")
    fig, ax = plt.subplots(figsize=(9, 4))
    rows = ["pretrained", *metrics["methods"]]
    width = 0.2
    for k, condition in enumerate(CONDITIONS):
        values = [100 * (metrics["pretrained"] if r == "pretrained" else metrics["methods"][r])[condition]["mR"]
                  for r in rows]
        ax.bar([i + (k - 1.5) * width for i in range(len(rows))], values, width, label=condition)
    ax.set_xticks(range(len(rows)), [NAMES[r] for r in rows], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("mR (%)")
    ax.set_ylim(0, 100)
    ax.set_title("mR clean and under attack (test gallery)", pad=22)
    ax.grid(alpha=0.3, axis="y")
    # Above the axes, between them and the title: inside, it would cover the tallest bars.
    ax.legend(fontsize=8, ncol=len(CONDITIONS), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    save_figure(fig, out / "robustness.png")


def main_table(metrics: dict[str, Any]) -> str:
    rows = []
    reference = metrics["pretrained"]
    rows.append([NAMES["pretrained"], "—", *(percent(reference[c]["mR"]) for c in CONDITIONS), "—"])
    for name, values in metrics["methods"].items():
        rows.append([NAMES[name], f"{values['trainable_params']:,} ({100 * values['trainable_fraction']:.2f}%)",
                     *(percent(values[c]["mR"]) for c in CONDITIONS), f"{values['seconds']:.0f}"])
    steps = metrics["settings"]["eval_steps"]
    return markdown_table(["row", "trainable params", "clean mR", f"PGD-{steps} mR", "FGSM mR",
                           f"transfer (PGD-{steps}) mR", "train s"], rows)


def _recall_table(metrics: dict[str, Any], condition: str) -> str:
    rows = [[NAMES[name], *(percent(values[condition][d][f"r{k}"]) for d in ("i2t", "t2i") for k in (1, 5, 10)),
             percent(values[condition]["mR"])] for name, values in metrics["methods"].items()]
    return markdown_table(["row", "i2t R@1", "i2t R@5", "i2t R@10", "t2i R@1", "t2i R@5", "t2i R@10", "mR"], rows)


def _placement(targets: list[str] | None) -> str:
    if targets is None:
        return "attention projections (the backend's default)"
    return "layers " + ", ".join(f"`{t}`" for t in targets)


def _pt(value: float) -> str:
    return f"{100 * value:+.1f} pt"


def report_markdown(metrics: dict[str, Any]) -> str:
    s, methods, t = metrics["settings"], metrics["methods"], metrics["targets"]
    pgd = {name: values["pgd"]["mR"] for name, values in methods.items()}
    lines = [
        "# AdvLoRA: adversarially robust low-rank adaptation for retrieval",
        "",
        f"Every row starts from `{s['model']}` and fine-tunes on {s['train_images']} fresh retrieval-world images "
        f"(seed {s['train_seed']}) for {s['train']['steps']} steps of batch {s['train']['batch_size']} through the "
        f"one loop; adversarial rows train on ℓ∞ PGD-{s['train_attack_steps']} at ε = {s['eps']}. LoRA rows adapt "
        f"the image tower's {_placement(s.get('image_targets'))} at rank {s['rank']}. Learning rates (chosen on val by "
        f"`vlalign experiment advlora-select`): " + ", ".join(f"{k} {v:g}" for k, v in s["lr"].items()) + ". "
        f"Test gallery: {s['test_images']} images, {5 * s['test_images']} captions (seed {s['test_seed']}). "
        f"Attacks at ε = {s['eps']}: white-box PGD-{s['eval_steps']}, FGSM, and PGD-{s['eval_steps']} transferred "
        f"from the pretrained model (the same images for every row).",
        "",
        main_table(metrics),
        "",
        "![mR clean and under attack](robustness.png)",
        "",
        "## Targets",
        "",
        f"- clean LoRA's PGD mR is at most half its clean mR: **{'met' if t['lora_clean_pgd_at_most_half_clean']['met'] else 'not met'}** "
        f"({percent(pgd['lora_clean'])} vs {percent(methods['lora_clean']['clean']['mR'])} clean)",
        f"- AdvLoRA ≥ adversarial LoRA + 2 points under PGD: **{'met' if t['advlora_vs_lora_adversarial_plus_2']['met'] else 'not met'}** "
        f"({percent(pgd['advlora'])} vs {percent(pgd['lora_adversarial'])}, {_pt(pgd['advlora'] - pgd['lora_adversarial'])})",
        f"- AdvLoRA ≥ clean LoRA + 20 points under PGD: **{'met' if t['advlora_vs_lora_clean_plus_20']['met'] else 'not met'}** "
        f"({_pt(pgd['advlora'] - pgd['lora_clean'])})",
        f"- AdvLoRA trains ≤ 5% of full fine-tuning's parameters: **{'met' if t['advlora_params_at_most_5pct_of_full']['met'] else 'not met'}** "
        f"({100 * t['advlora_params_at_most_5pct_of_full']['ratio']:.1f}%)",
        f"- AdvLoRA within 3 points of adversarial full fine-tuning under PGD: "
        f"**{'met' if t['advlora_within_3_of_full_adversarial']['met'] else 'not met'}** "
        f"({_pt(pgd['advlora'] - pgd['full_adversarial'])})",
        "",
        "## Ablations: AdvLoRA minus one part",
        "",
        markdown_table(["removed part", "clean mR change", "PGD mR change", "FGSM mR change", "transfer mR change"], [
            [NAMES[name].split("− ")[1], *(_pt(methods[name][c]["mR"] - methods["advlora"][c]["mR"]) for c in CONDITIONS)]
            for name in ("advlora_no_cluster_init", "advlora_no_alignment", "advlora_no_adaptive_alpha")]),
        "",
        "A negative change means the part helps that number; a positive one, that AdvLoRA is better without it.",
        "",
        "## Recall@k per condition",
        "",
    ]
    for condition in CONDITIONS:
        lines += [f"### {condition}", "", _recall_table(metrics, condition), ""]
    sweep = metrics["rank_sweep"]
    lines += ["## Rank sweep (AdvLoRA, test gallery)", "",
              markdown_table(["rank", "trainable params", "clean mR", f"PGD-{s['eval_steps']} mR"],
                             [[r, f"{v['trainable_params']:,}", percent(v["clean"]["mR"]), percent(v["pgd"]["mR"])]
                              for r, v in sweep.items()]), "", "![rank sweep](rank_sweep.png)", ""]
    lines += ["## Compound attack: a misleading written word plus ℓ∞ PGD on the same image", "",
              f"Each test image gets a shape or colour name its scene does not show, then PGD-{s['eval_steps']} at ε = "
              f"{s['eps']} attacks the worded image; captions stay clean (mR).", "",
              markdown_table(["model", "clean", "word", "PGD", "word + PGD"],
                             [[NAMES[n], *(percent(v[k]) for k in ("clean", "word", "pgd", "word_pgd"))]
                              for n, v in metrics["compound"].items()]), ""]
    if metrics["alpha"]:
        finals = ", ".join(f"{NAMES.get(n, n.replace('advlora_r', 'AdvLoRA r = '))} {v['alpha_mean'][-1]:.3f}"
                           for n, v in metrics["alpha"].items())
        lines += ["## Adaptive α", "", f"Mean α at the end of training: {finals}.", "", "![alpha](alpha.png)", ""]
    lines += ["## Gradient-masking checks", ""]
    lines += [f"- ⚠ {w}" for w in metrics["warnings"]] or [f"No row has FGSM or the transfer attack beating PGD-{s['eval_steps']}."]
    seconds = s["seconds"]
    lines += ["", f"Run time: {seconds['total']:.0f} s in total ({s['workers']} parallel process(es)); the "
              "`train s` column is each row's training alone.", ""]
    return "\n".join(lines)


def command_line(name: str, quick: bool, seed: int) -> str:
    return f"vlalign experiment {name} --out DIR{' --quick' if quick else ''}{f' --seed {seed}' if seed else ''}"


def report_from_run(run_dir: str | Path) -> str:
    """The Markdown report of a finished run folder, from its ``metrics.json``."""
    return report_markdown(read_json(Path(run_dir) / "metrics.json", ValueError, expect=dict))


def _criterion_words(metrics: dict[str, Any], s: dict[str, Any]) -> str:
    """What each family's rate maximized (a run from before clean families existed chose every one by PGD mR)."""
    pgd = f"mR under PGD-{s['eval_steps']} at ε = {s['eps']}"
    criterion = metrics.get("criterion")
    if not criterion:
        return pgd
    clean = [fam for fam, what in criterion.items() if what == "clean"]
    return f"clean mR for {', '.join(clean)}, {pgd} for the others" if clean else pgd


def selection_report_markdown(metrics: dict[str, Any]) -> str:
    s = metrics["settings"]
    rows = [[fam, lr, percent(v["clean"]["mR"]), percent(v["pgd"]["mR"]), "✓" if float(lr) == metrics["chosen"][fam] else ""]
            for fam, values in metrics["grid"].items() for lr, v in values.items()]
    return "\n".join([
        "# AdvLoRA experiment: learning rates chosen on val",
        "",
        f"One row of each family trained as in `vlalign experiment advlora` ({s['train']['steps']} steps), "
        f"evaluated on {s['val_images']} val images (seed {s['val_seed']}); chosen: the highest val "
        + _criterion_words(metrics, s) + " (ties: the lower rate).",
        "",
        markdown_table(["family", "lr", "val clean mR", "val PGD mR", "chosen"], rows),
        "",
        *(f"- {fam}: {lr:g}, the only rate of its grid (not trained here)."
          for fam, lr in metrics["chosen"].items() if fam not in metrics["grid"]),
        "",
    ])


def selection_report_from_run(run_dir: str | Path) -> str:
    """The Markdown report of a finished selection run, from its ``metrics.json``."""
    return selection_report_markdown(read_json(Path(run_dir) / "metrics.json", ValueError, expect=dict))


def targets(methods: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each with the numbers it compares (mR fractions; "points" are 0.01)."""
    pgd = {name: values["pgd"]["mR"] for name, values in methods.items()}
    lora_clean_clean = methods["lora_clean"]["clean"]["mR"]
    ratio = methods["advlora"]["trainable_params"] / methods["full_adversarial"]["trainable_params"]
    return {
        "lora_clean_pgd_at_most_half_clean": {"pgd": pgd["lora_clean"], "clean": lora_clean_clean,
                                              "met": pgd["lora_clean"] <= 0.5 * lora_clean_clean},
        "advlora_vs_lora_adversarial_plus_2": {"advlora": pgd["advlora"], "lora_adversarial": pgd["lora_adversarial"],
                                               "met": pgd["advlora"] >= pgd["lora_adversarial"] + 0.02},
        "advlora_vs_lora_clean_plus_20": {"advlora": pgd["advlora"], "lora_clean": pgd["lora_clean"],
                                          "met": pgd["advlora"] >= pgd["lora_clean"] + 0.20},
        "advlora_params_at_most_5pct_of_full": {"ratio": ratio, "met": ratio <= 0.05},
        "advlora_within_3_of_full_adversarial": {"advlora": pgd["advlora"], "full_adversarial": pgd["full_adversarial"],
                                                 "met": pgd["advlora"] >= pgd["full_adversarial"] - 0.03},
    }


def masking_warnings(methods: dict[str, Any]) -> list[str]:
    """Signs of gradient masking (AutoAttack's checks, adapted): a one-step or a black-box attack that hurts
    more than white-box PGD-10 at the same ε."""
    warnings = []
    for name, values in methods.items():
        pgd = values["pgd"]["mR"]
        for other in ("fgsm", "transfer"):
            if values[other]["mR"] < pgd - 0.01:
                warnings.append(f"{name}: {other} (mR {percent(values[other]['mR'])}) beats white-box PGD "
                                f"(mR {percent(pgd)}); the PGD evaluation may be masked")
    return warnings
