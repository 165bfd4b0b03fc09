"""Matplotlib figures: image grids with predictions, and line plots."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from vlalign.io import atomic_write_bytes  # noqa: E402


def prediction_grid(images: torch.Tensor, titles: Sequence[str], path: str | Path, colours: Sequence[str] | None = None,
                    columns: int = 8, suptitle: str | None = None) -> Path:
    """Save a grid of uint8 ``[N, 3, H, W]`` images, each with a (coloured) title, as a PNG."""
    n = images.shape[0]
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.1 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k].permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
            ax.set_title(titles[k], fontsize=7.5, color=colours[k] if colours else "black")
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 120) -> Path:
    """Render ``fig`` to PNG and write it atomically (through :mod:`vlalign.io`), then close it."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def line_plot(x: Sequence[float], series: dict[str, Sequence[float]], path: str | Path, xlabel: str, ylabel: str,
              title: str | None = None, vline: float | None = None) -> Path:
    """Save one line per series against ``x`` as a PNG."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in series.items():
        ax.plot(list(x), list(ys), marker="o", markersize=3, label=name)
    if vline is not None:
        ax.axvline(vline, color="gray", linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
