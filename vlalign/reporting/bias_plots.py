"""Figures of the attribute experiment: predictions across the Σ^t sweep (paper Fig. 3) and the attribute mix of
retrieved images (Fig. 4)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _save(fig: plt.Figure, path: str | Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def attribute_sweep_figure(panels: Mapping[str, Mapping[str, object]], path: str | Path) -> Path:
    """One panel per method: P(pred A | A images), P(pred A | B images), P(pred A) and activity accuracy against t.

    Each panel maps ``t``, ``a_rate_given_a``, ``a_rate_given_b``, ``a_rate``, ``activity_accuracy`` to lists and
    ``t_star`` to a float or None (drawn as a vertical line where the two conditional curves cross).
    """
    if not panels:
        raise ValueError("no panels to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    for ax, (name, panel) in zip(axes[0], panels.items()):
        t = list(panel["t"])
        marker = "o" if len(t) <= 30 else None  # a dense grid reads as a line
        ax.plot(t, panel["a_rate_given_a"], marker=marker, markersize=3, label="predicted A | style-A images")
        ax.plot(t, panel["a_rate_given_b"], marker=marker, markersize=3, label="predicted A | style-B images")
        ax.plot(t, panel["a_rate"], color="gray", linewidth=1, label="predicted A | all images")
        ax.plot(t, panel["activity_accuracy"], color="black", linestyle="--", label="activity accuracy")
        ax.axhline(0.5, color="gray", linestyle=":", linewidth=1)
        t_star = panel.get("t_star")
        if t_star is not None:
            ax.axvline(float(t_star), color="red", linestyle="--", linewidth=1)
            ax.annotate(f"t* = {float(t_star):.2f}", (float(t_star), 0.03), color="red", fontsize=8, xytext=(4, 0),
                        textcoords="offset points")
        ax.set_xlabel("transformation scaling t  (W_t = U Σ^t Vᵀ)")
        ax.set_ylabel("rate")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        # Below the axes: inside, any corner can cover the crossing (t*) or a curve.
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    return _save(fig, path)


def parity_gap_figure(curves: Mapping[str, tuple[Sequence[float], Sequence[float], float | None]], target: float,
                      path: str | Path,
                      windows: Mapping[str, tuple[float, float, float] | None] | None = None) -> Path:
    """Retrieval parity gap against t, one line per path; ``curves`` maps a name to (t, gaps, t*), and t* (the
    crossing of the attribute-prediction rates) is marked on its line. ``target`` is drawn as a horizontal line.
    ``windows`` maps a name to (lo, hi, mean): the gap's mean over [lo, hi], drawn as a thick bar over that range."""
    if not curves:
        raise ValueError("no curves to plot")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for name, (t, gaps, t_star) in curves.items():
        if len(t) != len(gaps):
            raise ValueError(f"{name}: {len(t)} t values for {len(gaps)} gaps")
        (line,) = ax.plot(list(t), list(gaps), label=name, linewidth=1.5)
        if t_star is not None:
            ax.plot([float(t_star)], [float(np.interp(float(t_star), list(t), list(gaps)))], marker="o",
                    color=line.get_color(), markersize=7)
        window = (windows or {}).get(name)
        if window is not None:
            ax.plot([window[0], window[1]], [window[2], window[2]], color=line.get_color(), linewidth=5, alpha=0.6,
                    solid_capstyle="butt")
    ax.axhline(target, color="red", linestyle="--", linewidth=1, label=f"target (≤ {100 * target:.1f}%)")
    ax.set_xlabel("t")
    ax.set_ylabel("retrieval parity gap")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Parity gap along each path (dot: t*; bar: its mean over t* ± w)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def retrieval_mix_figure(activities: Sequence[str], a_shares: Mapping[str, Sequence[float]], path: str | Path,
                         stereotype: Sequence[int] | None = None, k: int = 10) -> Path:
    """Grouped bars: share of style-A images among each neutral activity prompt's top-k retrievals, per model."""
    if not a_shares:
        raise ValueError("no models to plot")
    n, m = len(activities), len(a_shares)
    width = 0.8 / m
    x = np.arange(n)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * n), 4.4))
    for j, (name, shares) in enumerate(a_shares.items()):
        if len(shares) != n:
            raise ValueError(f"{name}: {len(shares)} shares for {n} activities")
        ax.bar(x - 0.4 + width * (j + 0.5), list(shares), width, label=name)
    ax.axhline(0.5, color="black", linestyle=":", linewidth=1)
    # Wrapped to the width of one bar group, so neighbouring labels cannot run into each other.
    labels = [textwrap.fill(a, 12) + ("" if stereotype is None else f"\n(stereotype {'AB'[s]})")
              for a, s in zip(activities, stereotype or [0] * n)]
    ax.set_xticks(x, labels, fontsize=7.5)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"share of style-A images in top-{k}")
    ax.set_title('Retrieval with "the person is <activity>": attribute mix of the retrieved images')
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def retrieval_strip(rows: Mapping[str, tuple[torch.Tensor, Sequence[str]]], path: str | Path, title: str) -> Path:
    """One row of retrieved images per model (uint8 ``[k, 3, H, W]``), each captioned (e.g. with its attribute)."""
    if not rows:
        raise ValueError("no rows to plot")
    k = max(images.shape[0] for images, _ in rows.values())
    fig, axes = plt.subplots(len(rows), k, figsize=(1.25 * k, 1.55 * len(rows)), squeeze=False)
    for r, (name, (images, captions)) in enumerate(rows.items()):
        for c in range(k):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < images.shape[0]:
                ax.imshow(images[c].permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
                ax.set_title(captions[c], fontsize=7)
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi=110)


_SEED_MARKERS = "osD^v<>ph*"


def seed_spread_figure(panels: Mapping[str, Mapping[str, Sequence[float | None]]], titles: Mapping[str, str],
                       targets: Mapping[str, float | None], seeds: Sequence[int], path: str | Path) -> Path:
    """One panel per figure: for each method, one marker per seed (None values skipped) and the mean ± sample
    standard deviation as a bar; ``targets[name]`` (if not None) as a dashed line.

    ``panels`` maps a figure name to {method: one value per seed, in the order of ``seeds``}.
    """
    if not panels:
        raise ValueError("no panels to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    for ax, (name, by_method) in zip(axes[0], panels.items()):
        labelled: set[int] = set()
        for x, (method, values) in enumerate(by_method.items()):
            if len(values) != len(seeds):
                raise ValueError(f"{name}/{method}: {len(values)} values for {len(seeds)} seeds")
            present = [(j, seed, float(v)) for j, (seed, v) in enumerate(zip(seeds, values)) if v is not None]
            for j, seed, value in present:  # a seed keeps its colour and marker in every panel
                ax.plot(x + 0.12 * (j - (len(seeds) - 1) / 2), value, _SEED_MARKERS[j % len(_SEED_MARKERS)],
                        color=f"C{j}", markersize=6, label=None if j in labelled else f"seed {seed}")
                labelled.add(j)
            if present:
                vals = np.array([v for _, _, v in present])
                std = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
                ax.errorbar(x + 0.35, float(vals.mean()), yerr=std, fmt="_", color="black", markersize=14, capsize=4,
                            label="mean ± std" if x == 0 else None)
        target = targets.get(name)
        if target is not None:
            ax.axhline(target, color="red", linestyle="--", linewidth=1, label="target")
        ax.set_xticks(range(len(by_method)), list(by_method))
        ax.set_xlim(-0.5, len(by_method) - 0.3)
        ax.set_title(titles.get(name, name), fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=7, loc="best")
    return _save(fig, path)


def seed_parity_figure(curves: Mapping[str, Mapping[int, tuple[Sequence[float], Sequence[float],
                                                                 Sequence[float] | None, float | None, float]]],
                       path: str | Path) -> Path:
    """Retrieval parity gap against t, one panel per method and one line per seed, with each seed's averaging
    window around t* shaded, the gap's mean over it drawn as a thick bar, and the seed's target dashed.

    ``curves`` maps a method to {seed: (t, gaps, window [lo, hi] or None, mean over the window or None, target)}.
    """
    if not curves:
        raise ValueError("no curves to plot")
    fig, axes = plt.subplots(1, len(curves), figsize=(4.6 * len(curves), 3.8), squeeze=False)
    for ax, (method, by_seed) in zip(axes[0], curves.items()):
        for j, (seed, (t, gaps, window, mean, target)) in enumerate(by_seed.items()):
            if len(t) != len(gaps):
                raise ValueError(f"{method}, seed {seed}: {len(t)} t values for {len(gaps)} gaps")
            colour = f"C{j}"
            ax.plot(list(t), list(gaps), color=colour, linewidth=1.3, label=f"seed {seed}")
            ax.axhline(target, color=colour, linestyle="--", linewidth=0.8)
            if window is not None:
                ax.axvspan(window[0], window[1], color=colour, alpha=0.12)
                if mean is not None:
                    ax.plot([window[0], window[1]], [mean, mean], color=colour, linewidth=5, alpha=0.8,
                            solid_capstyle="butt")
        ax.set_xlabel("t  (W_t = U Σ^t Vᵀ)")
        ax.set_ylabel("retrieval parity gap")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{method}: parity gap per seed (bar: mean over t* ± w)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)
