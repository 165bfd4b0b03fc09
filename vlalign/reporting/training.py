"""Reports of training runs (``vlalign train``, ``pretrain-mini``): the config, the results and the loss curves."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

from vlalign.io import read_json  # noqa: E402
from vlalign.reporting.tables import markdown_table, metrics_table  # noqa: E402
from vlalign.training.run_identity import RESOLVED_FILE  # noqa: E402

#: metrics.csv columns that are not loss terms.
NOT_TERMS = ("step", "lr")


def read_metrics_csv(path: str | Path) -> dict[str, list[float]]:
    """``metrics.csv`` as columns of floats (empty cells are skipped per column)."""
    columns: dict[str, list[float]] = {}
    with Path(path).open(newline="") as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if value not in ("", None):
                    columns.setdefault(key, []).append(float(value))
    return columns


def training_curves(metrics_csv: str | Path, out_png: str | Path, title: str = "") -> Path | None:
    """One panel per logged loss term and one for the learning rate, against the step; None without data."""
    columns = read_metrics_csv(metrics_csv)
    if len(columns.get("step", [])) < 1:
        return None
    terms = [k for k in columns if k not in NOT_TERMS and len(columns[k]) == len(columns["step"])]
    panels = terms + (["lr"] if "lr" in columns else [])
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, panels):
        ax.plot(columns["step"], columns[name], marker="." if len(columns["step"]) < 30 else None, color="C0"
                if name != "lr" else "C1")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)


#: Section of a run config -> its section in ``resolved_config.json`` (:func:`vlalign.training.run_identity.resolved_settings`).
_RESOLVED_SECTIONS = {"options": "method", "train": "train"}


def resolved_nulls(config: dict, resolved: dict) -> list[tuple[str, object]]:
    """``(section.field, value)`` for every field a run config leaves null whose value the run resolved (the
    method's β/λ, the loop's lr/optimizer/betas/weight decay, the attack step), from ``resolved_config.json``."""
    rows = []
    for section, key in _RESOLVED_SECTIONS.items():
        written, used = config.get(section), resolved.get(key)
        if not isinstance(written, dict) or not isinstance(used, dict):
            continue
        rows += [(f"{section}.{name}", used[name]) for name, value in written.items()
                 if value is None and used.get(name) is not None]
    return rows


def _shown(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return str(value)


def training_report(run_dir: str | Path) -> str:
    """The Markdown report of a training run folder: results, curves, and the config it was trained with."""
    run_dir = Path(run_dir)
    configs = (run_dir / "train_config.json", run_dir / "pretrain_config.json")
    config = next((read_json(p, ValueError, expect=dict) for p in configs if p.is_file()), {})
    metrics_path = run_dir / "metrics.json"
    metrics = read_json(metrics_path, ValueError, expect=dict) if metrics_path.is_file() else {}
    name = config.get("method") or config.get("world_kind") or "training"
    lines = [f"# Training run: {name}", ""]
    if metrics:
        lines += ["## Results", "", metrics_table(metrics), ""]
    if (run_dir / "metrics.csv").is_file():
        curves = training_curves(run_dir / "metrics.csv", run_dir / "training_curves.png", f"{name}: logged terms")
        if curves is not None:
            lines += ["## Loss terms and learning rate", "", f"![training curves]({curves.name})", ""]
    if config:
        lines += ["## Config", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
        resolved_path = run_dir / RESOLVED_FILE
        resolved = read_json(resolved_path, ValueError) if resolved_path.is_file() else None
        if isinstance(resolved, dict) and (rows := resolved_nulls(config, resolved)):
            lines += ["Values the run used where the config says null (the method's defaults, recorded in "
                      f"`{RESOLVED_FILE}`):", "", markdown_table(["field", "value"], [[k, _shown(v)] for k, v in rows]),
                      ""]
    return "\n".join(lines)


def vlm_pretraining_report(run_dir: str | Path) -> str:
    """The Markdown report of ``vlalign pretrain-vlm``: results on fresh images, each stage's curves, the config."""
    run_dir = Path(run_dir)
    config_path, metrics_path = run_dir / "pretrain_config.json", run_dir / "metrics.json"
    config = read_json(config_path, ValueError, expect=dict) if config_path.is_file() else {}
    metrics = read_json(metrics_path, ValueError, expect=dict) if metrics_path.is_file() else {}
    lines = ["# Mini VLM pretraining", ""]
    if metrics:
        lines += ["## Results (fresh images)", "", metrics_table(metrics), ""]
    for stage in sorted(p for p in run_dir.iterdir() if p.is_dir() and (p / "metrics.csv").is_file()):
        curves = training_curves(stage / "metrics.csv", run_dir / f"{stage.name}_curves.png", stage.name)
        if curves is not None:
            lines += [f"## {stage.name}: loss terms and learning rate", "", f"![{stage.name}]({curves.name})", ""]
    if config:
        lines += ["## Config", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)
