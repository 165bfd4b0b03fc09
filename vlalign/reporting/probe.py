"""The report of ``vlalign probe``: the object probe beside the model's zero-shot accuracy, per split."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vlalign.io import read_json  # noqa: E402
from vlalign.reporting.figures import save_figure  # noqa: E402
from vlalign.reporting.tables import markdown_table, percent  # noqa: E402

SPLIT_NAMES = {"typographic": "typographic (another class name written)", "clean": "clean (no word)",
               "nonreading": "non-reading control (random letters in the same boxes)"}

#: What a MiniCLIP that reads the way real CLIP reads should show (issue 13): (metric, bound, at least?).
READING_TARGETS: dict[str, tuple[float, bool]] = {
    "clean zero-shot": (0.85, True), "typographic zero-shot": (0.40, False),
    "written-label rate": (0.45, True), "typographic probe": (0.70, True),
}


def target_values(metrics: dict) -> dict[str, float]:
    """The values the :data:`READING_TARGETS` are stated on."""
    splits = metrics["splits"]
    return {"clean zero-shot": splits["clean"]["zero_shot"], "typographic zero-shot": splits["typographic"]["zero_shot"],
            "written-label rate": splits["typographic"]["written_label_rate"],
            "typographic probe": splits["typographic"]["probe"]}


def targets_met(metrics: dict) -> dict[str, bool]:
    values = target_values(metrics)
    return {name: (values[name] >= bound) if at_least else (values[name] <= bound)
            for name, (bound, at_least) in READING_TARGETS.items()}


def plot_probe(metrics: dict, path: Path) -> Path:
    splits = list(metrics["splits"])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    xs = range(len(splits))
    ax.bar([x - 0.2 for x in xs], [metrics["splits"][s]["zero_shot"] for s in splits], width=0.4, label="zero-shot")
    ax.bar([x + 0.2 for x in xs], [metrics["splits"][s]["probe"] for s in splits], width=0.4,
           label="linear probe (frozen features)")
    ax.set_xticks(list(xs), splits)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (12-way)")
    ax.axhline(1 / 12, color="gray", lw=0.8, ls=":")
    ax.legend(fontsize=8, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.set_title(f"{metrics['model']}: is the object still linearly present?", pad=22)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def probe_report(metrics: dict) -> str:
    """Markdown body of a probe run."""
    s, splits = metrics["settings"], metrics["splits"]
    rows = [[SPLIT_NAMES.get(name, name), percent(r["zero_shot"]), percent(r.get("written_label_rate")),
             percent(r["probe"]), percent(r["probe_train"])] for name, r in splits.items()]
    values, met = target_values(metrics), targets_met(metrics)
    target_rows = [[name, f"{'≥' if at_least else '≤'} {percent(bound)}", percent(values[name]),
                    "met" if met[name] else "**not met**"] for name, (bound, at_least) in READING_TARGETS.items()]
    penalty = (f"L2 {s['l2']}" if s["l2"] is not None else "L2 chosen per split on a quarter of the training draw: "
               + ", ".join(f"{name} {row['l2']}" for name, row in splits.items()))
    return f"""# Linear probe of the object class: {metrics['model']}

Does the model keep the object in its image features once a word is written? A multinomial logistic regression
({penalty}; full-batch L-BFGS on whitened features) is trained on the frozen normalized image embeddings of
{s['n_train']} images of each split (seed {s['train_seed']}) and tested on {s['n_test']} others (seed
{s['test_seed']}); 12 classes, chance 8.3%. Zero-shot accuracy is the model's own, on the same test images.

{markdown_table(["split", "zero-shot", "pred = written word", "probe (test draw)", "probe (train draw)"], rows)}

Reading effect (zero-shot, non-reading control − typographic): **{100 * metrics['reading_effect']:+.1f} points**;
gap to clean: {100 * (splits['clean']['zero_shot'] - splits['typographic']['zero_shot']):.1f} points, of which
{100 * (splits['clean']['zero_shot'] - splits['nonreading']['zero_shot']):.1f} remain with random letters in the same
boxes (occlusion and clutter, not reading).

![probe](probe.png)

## Targets for a MiniCLIP that reads the way CLIP reads (issue 13)

{markdown_table(["quantity", "target", "measured", ""], target_rows)}
"""


def report_from_run(run_dir: str | Path) -> str:
    """The Markdown body of a finished probe run, from its ``metrics.json``."""
    return probe_report(read_json(Path(run_dir) / "metrics.json", ValueError, expect=dict))
