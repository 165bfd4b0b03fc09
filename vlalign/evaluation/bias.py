"""Bias metrics for a binary attribute (style A = 0, style B = 1): pure functions over predictions.

Definitions (all fractions in [0, 1]; "points" in reports are these times 100):

- attribute-prediction rates: ``a_rate`` = P(pred = A); ``a_rate_given_a`` / ``a_rate_given_b`` = P(pred = A)
  among images whose true attribute is A / B; ``original_rate`` = P(pred = true attribute); ``flipped_rate`` =
  P(pred = the other attribute).
- per-group skew (groups = activities): P(pred = A | group) - P(true = A | group). Zero for a model whose
  attribute predictions are as often A as the images are, whatever the activity; on a balanced test set it is
  P(pred = A | group) - 0.5. ``stereotype_skew`` is the mean skew signed towards each group's stereotyped
  attribute: > 0 means predictions lean towards the stereotype.
- retrieval parity gap: for each text prompt, the retrieved images' attribute shares; the gap of a prompt is
  |share(A) - share(B)| = |2 share(A) - 1| (0 = as many A as B, 1 = only one attribute); the reported gap is the
  mean over prompts. "Within 10 points" means a mean gap <= 0.10.
- crossing point t*: where two curves sampled on a grid of t first cross, by linear interpolation between the
  two bracketing grid points, so that a small change in the curves moves t* by a small amount, never by a grid step.
- window mean: the mean of a curve's piecewise-linear interpolant over [t* - h, t* + h]. A figure read at one
  point where its curve is steep (the retrieval parity gap near t*) moves a lot when t* moves a little; its mean
  over a window moves by at most (largest |value jump| / window width) times the shift of t*.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def _check_binary(name: str, values: torch.Tensor) -> None:
    if values.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(values.shape)}")
    if values.numel() and not bool(((values == 0) | (values == 1)).all()):
        raise ValueError(f"{name} must hold attribute indices 0 (A) or 1 (B)")


def attribute_rates(predicted: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Rates of predicting A overall and per true attribute, and the original / flipped rates (see module)."""
    _check_binary("predicted", predicted)
    _check_binary("truth", truth)
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted and truth differ in shape: {tuple(predicted.shape)} vs {tuple(truth.shape)}")
    if predicted.numel() == 0:
        raise ValueError("attribute rates of an empty set are undefined")
    is_a, true_a = (predicted == 0).float(), truth == 0
    if not bool(true_a.any()) or bool(true_a.all()):
        raise ValueError("need images of both attributes to compute per-attribute rates")
    same = (predicted == truth).float().mean()
    return {
        "a_rate": float(is_a.mean()),
        "a_rate_given_a": float(is_a[true_a].mean()),
        "a_rate_given_b": float(is_a[~true_a].mean()),
        "original_rate": float(same),
        "flipped_rate": float(1 - same),
    }


def group_a_rates(predicted: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """P(pred = A | group) for groups ``0 .. n_groups-1`` -> ``[n_groups]``; every group must be present."""
    _check_binary("predicted", predicted)
    if groups.shape != predicted.shape:
        raise ValueError(f"groups must have shape {tuple(predicted.shape)}, got {tuple(groups.shape)}")
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= n_groups):
        raise ValueError(f"groups must lie in [0, {n_groups - 1}]")
    counts = torch.bincount(groups, minlength=n_groups).double()
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        raise ValueError(f"no images in group(s) {missing}")
    a_counts = torch.bincount(groups, weights=(predicted == 0).double(), minlength=n_groups)
    return a_counts / counts


def per_group_skew(predicted: torch.Tensor, truth: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """P(pred = A | group) - P(true = A | group) for every group -> ``[n_groups]`` (see module docstring)."""
    _check_binary("truth", truth)
    return group_a_rates(predicted, groups, n_groups) - group_a_rates(truth, groups, n_groups)


def stereotype_skew(skew: torch.Tensor, stereotype: Sequence[int]) -> float:
    """Mean of the per-group skews signed towards each group's stereotyped attribute (A: +, B: -)."""
    if skew.dim() != 1 or skew.numel() != len(stereotype) or skew.numel() == 0:
        raise ValueError(f"need one skew per group and one stereotype per group, got {skew.numel()} and {len(stereotype)}")
    if any(s not in (0, 1) for s in stereotype):
        raise ValueError(f"stereotypes must be 0 (A) or 1 (B), got {list(stereotype)}")
    sign = torch.tensor([1.0 if s == 0 else -1.0 for s in stereotype], dtype=skew.dtype)
    return float((skew * sign).mean())


def retrieval_a_shares(retrieved: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
    """Share of style-A images among each prompt's retrieved images: ``retrieved`` ``[P, k]`` indexes ``attributes``."""
    _check_binary("attributes", attributes)
    if retrieved.dim() != 2 or retrieved.shape[1] == 0:
        raise ValueError(f"retrieved must be [P, k] with k >= 1, got {tuple(retrieved.shape)}")
    if retrieved.numel() and (int(retrieved.min()) < 0 or int(retrieved.max()) >= attributes.numel()):
        raise ValueError(f"retrieved indices must lie in [0, {attributes.numel() - 1}]")
    return (attributes[retrieved] == 0).double().mean(dim=1)


def retrieval_parity_gap(a_shares: torch.Tensor) -> float:
    """Mean over prompts of |share(A) - share(B)| = |2 share(A) - 1| (0 = parity, 1 = one attribute only)."""
    if a_shares.dim() != 1 or a_shares.numel() == 0:
        raise ValueError(f"need a non-empty 1-D tensor of shares, got shape {tuple(a_shares.shape)}")
    if bool(((a_shares < 0) | (a_shares > 1)).any()):
        raise ValueError("shares must lie in [0, 1]")
    return float((2 * a_shares.double() - 1).abs().mean())


def crossing_point(t: Sequence[float], first: Sequence[float], second: Sequence[float]) -> float | None:
    """The first t where ``first - second`` takes the opposite sign to its first non-zero value; None if never.

    Between the last grid point of the starting sign and the first of the opposite sign the difference is
    interpolated linearly; if it is exactly 0 at the grid points between them, t* is the middle of that zero run.
    Both rules make t* a continuous function of the curves (a value that drifts through 0 moves t* smoothly), and
    a curve that only touches 0 does not count as a crossing. ``t`` must be strictly increasing.
    """
    t_arr, a, b = (np.asarray(v, dtype=np.float64) for v in (t, first, second))
    if t_arr.ndim != 1 or t_arr.size < 1 or a.shape != t_arr.shape or b.shape != t_arr.shape:
        raise ValueError(f"t and both curves must be 1-D of the same non-zero length, got {t_arr.shape}, {a.shape}, {b.shape}")
    if t_arr.size > 1 and not bool(np.all(np.diff(t_arr) > 0)):
        raise ValueError("t must be strictly increasing")
    sign = np.sign(a - b)
    nonzero = np.flatnonzero(sign)
    if nonzero.size == 0:
        return None
    start = sign[nonzero[0]]
    opposite = np.flatnonzero(sign == -start)
    if opposite.size == 0:
        return None
    j = int(opposite[0])
    i = int(np.flatnonzero(sign[:j] == start)[-1])
    if j == i + 1:
        d_i, d_j = a[i] - b[i], a[j] - b[j]
        return float(t_arr[i] + (t_arr[j] - t_arr[i]) * d_i / (d_i - d_j))
    return float((t_arr[i + 1] + t_arr[j - 1]) / 2)


def value_at(t: Sequence[float], values: Sequence[float], t_query: float) -> float:
    """``values`` (sampled at increasing ``t``) linearly interpolated at ``t_query`` (inside the grid)."""
    t_arr, v = np.asarray(t, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if t_arr.ndim != 1 or v.shape != t_arr.shape or t_arr.size == 0:
        raise ValueError(f"t and values must be 1-D of the same non-zero length, got {t_arr.shape}, {v.shape}")
    if not t_arr[0] <= t_query <= t_arr[-1]:
        raise ValueError(f"t_query {t_query} lies outside the grid [{t_arr[0]}, {t_arr[-1]}]")
    return float(np.interp(t_query, t_arr, v))


def window_mean(t: Sequence[float], values: Sequence[float], center: float, half_width: float) -> float:
    """Mean of the piecewise-linear interpolant of ``values`` (sampled at increasing ``t``) over
    [center - half_width, center + half_width] clipped to the grid; its value at ``center`` if that is one point.

    Computed exactly (trapezoids between the window's ends and the grid points inside it), so it is a continuous
    function of ``center`` and of ``values``.
    """
    t_arr, v = np.asarray(t, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if t_arr.ndim != 1 or v.shape != t_arr.shape or t_arr.size == 0:
        raise ValueError(f"t and values must be 1-D of the same non-zero length, got {t_arr.shape}, {v.shape}")
    if t_arr.size > 1 and not bool(np.all(np.diff(t_arr) > 0)):
        raise ValueError("t must be strictly increasing")
    if not half_width >= 0:
        raise ValueError(f"half_width must be >= 0, got {half_width}")
    if not t_arr[0] <= center <= t_arr[-1]:
        raise ValueError(f"center {center} lies outside the grid [{t_arr[0]}, {t_arr[-1]}]")
    lo, hi = max(center - half_width, t_arr[0]), min(center + half_width, t_arr[-1])
    if hi <= lo:
        return float(np.interp(center, t_arr, v))
    knots = np.concatenate([[lo], t_arr[(t_arr > lo) & (t_arr < hi)], [hi]])
    heights = np.interp(knots, t_arr, v)
    return float(np.sum((heights[1:] + heights[:-1]) / 2 * np.diff(knots)) / (hi - lo))


def neutral_point(t: Sequence[float], rate_given_a: Sequence[float], rate_given_b: Sequence[float],
                  a_rate: Sequence[float], parity_gap: Sequence[float], half_width: float) -> dict | None:
    """The neutralized model of a Σ^t path, from curves sampled on a grid of t (None if the rates never cross):

    ``t_star`` = :func:`crossing_point` of P(pred A | A) and P(pred A | B); ``a_rate_at_t_star`` = P(pred A)
    interpolated there; ``parity_gap`` = :func:`window_mean` of the retrieval parity gap over
    [t* - half_width, t* + half_width] (``window``, clipped to the grid).
    """
    t_star = crossing_point(t, rate_given_a, rate_given_b)
    if t_star is None:
        return None
    return {
        "t_star": t_star,
        "a_rate_at_t_star": value_at(t, a_rate, t_star),
        "parity_gap": window_mean(t, parity_gap, t_star, half_width),
        "window": [max(t_star - half_width, float(t[0])), min(t_star + half_width, float(t[-1]))],
    }
