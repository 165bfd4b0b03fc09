"""The Σ^t sweep of a linear-head model with its frontier plot and orthogonality report (Figs. 2 and 8)."""

from __future__ import annotations

import json

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vlalign.data.mini_world import MiniWorld  # noqa: E402
from vlalign.evaluation.control import is_monotonic, sweep_head_power  # noqa: E402
from vlalign.io import atomic_write_json  # noqa: E402
from vlalign.reporting.run_report import run_info, write_report  # noqa: E402
from vlalign.models.heads import HeadedCLIP  # noqa: E402
from vlalign.reporting.tables import markdown_table, percent, points  # noqa: E402


def control_sweep(model: HeadedCLIP, world: MiniWorld, ts: Sequence[float], n: int, seed: int) -> dict:
    """Clean, typographic and non-reading-control accuracy and the written-label rate for every t."""
    sweep = sweep_head_power(model, {"clean": world.sample("clean", n, seed),
                                     "typographic": world.sample("typographic", n, seed),
                                     "nonreading": world.sample("nonreading", n, seed)}, ts)
    return {"t": sweep["t"], "clean": sweep["clean"], "typographic": sweep["typographic"],
            "written_label_rate": sweep["typographic_written_label_rate"], "nonreading": sweep["nonreading"]}


def plot_frontier(control: dict, path: Path) -> Path:
    """Fig. 2: object accuracy (clean) against OCR behaviour (written-label rate), one point per t."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for key, label in (("clean", "clean accuracy"), ("typographic", "typographic accuracy"),
                       ("nonreading", "non-reading control accuracy"), ("written_label_rate", "written-label rate")):
        if key in control:  # sweeps from before the non-reading control lack it
            ax.plot(control["t"], control[key], marker="o", markersize=3, label=label)
    ax.axvline(0, color="gray", lw=0.8, ls=":")
    ax.axvline(1, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("t  (W_t = U Σ^t Vᵀ; 0 = pretrained, 1 = trained head)")
    ax.set_ylabel("fraction")
    ax.grid(alpha=0.3)
    # Above the axes: inside, any corner covers a curve somewhere along the sweep.
    ax.legend(fontsize=8, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax = axes[1]
    points = ax.scatter(control["written_label_rate"], control["clean"], c=control["t"], cmap="coolwarm")
    fig.colorbar(points, ax=ax, label="t")
    ax.set_xlabel("written-label rate (reads the word)")
    ax.set_ylabel("clean accuracy (sees the object)")
    ax.set_title("OCR vs object frontier")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_singular_values(model: HeadedCLIP, path: Path) -> Path:
    """Fig. 8: histogram of the singular values of W."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(model.head.singular_values().numpy(), bins=30, color="tab:blue")
    ax.axvline(1.0, color="gray", ls="--")
    ax.set_xlabel("singular value σ_i of W")
    ax.set_ylabel("count")
    ax.set_title(f"‖WᵀW − I‖_F = {model.head.orthogonality_error():.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_control_report(model: HeadedCLIP, world: MiniWorld, ts: Sequence[float], n: int, seed: int, out: Path) -> dict:
    """Run the sweep and write ``control.json``, ``frontier.png``, ``singular_values.png`` and ``report.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    control = control_sweep(model, world, ts, n, seed)
    control["written_label_rate_monotonic"] = is_monotonic(control["written_label_rate"])
    control["orthogonality_error"] = model.head.orthogonality_error()
    sv = model.head.singular_values()
    control["singular_values"] = {"min": float(sv.min()), "max": float(sv.max()), "mean": float(sv.mean())}
    plot_frontier(control, out / "frontier.png")
    plot_singular_values(model, out / "singular_values.png")
    control["n"], control["seed"] = n, seed
    atomic_write_json(out / "control.json", control)
    write_report(out, "control", control_report(control), run_info())
    print(_table(control))
    return control


def _table(control: dict) -> str:
    rows = [[f"{t:g}", percent(c), percent(ty), percent(w)] for t, c, ty, w in
            zip(control["t"], control["clean"], control["typographic"], control["written_label_rate"])]
    headers = ["t", "clean acc", "typographic acc", "written-label rate"]
    if "nonreading" in control:  # runs from before the non-reading control have no such column
        rows = [row + [percent(nr), points(nr - ty, signed=True)]
                for row, nr, ty in zip(rows, control["nonreading"], control["typographic"])]
        headers += ["non-reading acc", "reading effect"]
    return markdown_table(headers, rows)


def control_report(control: dict) -> str:
    """The Markdown report of a Σ^t sweep (``control.json``)."""
    return (f"# Σ^t control\n\n{control['n']} images per split, seed {control['seed']}. ‖WᵀW − I‖_F = "
            f"{control['orthogonality_error']:.3f}; σ ∈ [{control['singular_values']['min']:.3f}, "
            f"{control['singular_values']['max']:.3f}]. Written-label rate monotonic in t: "
            f"{control['written_label_rate_monotonic']}.\n\n{_table(control)}\n\n"
            "![frontier](frontier.png)\n\n![singular values](singular_values.png)\n")


def report_from_run(run_dir: str | Path) -> str:
    """The Markdown report of a sweep folder, from its ``control.json``."""
    return control_report(json.loads((Path(run_dir) / "control.json").read_text()))
