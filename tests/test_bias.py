"""Bias metrics on hand-worked examples."""

import pytest
import torch

import numpy as np

from vlalign.evaluation.bias import (
    attribute_rates, crossing_point, group_a_rates, neutral_point, per_group_skew, retrieval_a_shares,
    retrieval_parity_gap, stereotype_skew, value_at, window_mean,
)

A, B = 0, 1


def test_attribute_rates_hand_worked():
    truth = torch.tensor([A, A, A, A, B, B, B, B])
    pred = torch.tensor([A, A, A, B, A, A, B, B])
    rates = attribute_rates(pred, truth)
    assert rates["a_rate"] == pytest.approx(5 / 8)
    assert rates["a_rate_given_a"] == pytest.approx(3 / 4)
    assert rates["a_rate_given_b"] == pytest.approx(2 / 4)
    assert rates["original_rate"] == pytest.approx(5 / 8)   # 3 A right + 2 B right
    assert rates["flipped_rate"] == pytest.approx(3 / 8)


def test_attribute_rates_of_a_perfectly_flipped_model():
    truth = torch.tensor([A, B, A, B])
    rates = attribute_rates(1 - truth, truth)
    assert rates["flipped_rate"] == 1.0 and rates["a_rate_given_a"] == 0.0 and rates["a_rate_given_b"] == 1.0


def test_group_rates_and_skew_hand_worked():
    # Group 0: truth A,A,B,B predicted A,A,A,B -> 3/4 predicted A vs 2/4 true A: skew +0.25.
    # Group 1: truth A,B predicted B,B -> 0 vs 1/2: skew -0.5.
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    truth = torch.tensor([A, A, B, B, A, B])
    pred = torch.tensor([A, A, A, B, B, B])
    assert group_a_rates(pred, groups, 2).tolist() == pytest.approx([0.75, 0.0])
    skew = per_group_skew(pred, truth, groups, 2)
    assert skew.tolist() == pytest.approx([0.25, -0.5])
    # Group 0's stereotype is A (skew counts +), group 1's is B (skew counts -): mean(0.25, 0.5).
    assert stereotype_skew(skew, [A, B]) == pytest.approx(0.375)
    assert stereotype_skew(skew, [B, A]) == pytest.approx(-0.375)


def test_skew_is_zero_for_a_perfect_model():
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    truth = torch.tensor([A, B, A, A, B, B])
    assert per_group_skew(truth.clone(), truth, groups, 3).abs().max() == 0


def test_retrieval_shares_and_parity_gap():
    attributes = torch.tensor([A, A, B, B, A, B])
    retrieved = torch.tensor([[0, 1, 4, 2],    # 3 of 4 are A
                              [2, 3, 5, 0]])   # 1 of 4 is A
    shares = retrieval_a_shares(retrieved, attributes)
    assert shares.tolist() == pytest.approx([0.75, 0.25])
    # |0.75 - 0.25| = 0.5 for both prompts.
    assert retrieval_parity_gap(shares) == pytest.approx(0.5)
    assert retrieval_parity_gap(torch.tensor([0.5, 0.5])) == 0.0
    assert retrieval_parity_gap(torch.tensor([1.0, 0.0])) == 1.0


def test_crossing_point_linear_interpolation():
    t = [0.0, 0.5, 1.0]
    # first - second: 0.6, 0.2, -0.2 -> crosses halfway between 0.5 and 1.0.
    assert crossing_point(t, [0.8, 0.6, 0.4], [0.2, 0.4, 0.6]) == pytest.approx(0.75)
    assert crossing_point(t, [1.0, 0.5, 0.0], [0.5, 0.5, 0.5]) == pytest.approx(0.5)  # exact zero at a grid point
    assert crossing_point(t, [1.0, 0.9, 0.8], [0.0, 0.1, 0.2]) is None
    assert value_at(t, [0.8, 0.6, 0.4], 0.75) == pytest.approx(0.5)


def test_crossing_point_zero_runs_and_touches():
    t = [0.0, 1.0, 2.0, 3.0]
    # first - second: +1, 0, 0, -1 -> the zero run [1, 2] is where they cross: its middle.
    assert crossing_point(t, [1, 0, 0, -1], [0, 0, 0, 0]) == pytest.approx(1.5)
    # +1, 0, +1, -1: touching 0 is not a crossing; the sign flips between t = 2 and 3, halfway.
    assert crossing_point(t, [1, 0, 1, -1], [0, 0, 0, 0]) == pytest.approx(2.5)
    # Starting equal: the first order of the curves is the one after the start.
    assert crossing_point(t, [0, 1, -1, -1], [0, 0, 0, 0]) == pytest.approx(1.5)
    assert crossing_point(t, [0, 0, 0, 0], [0, 0, 0, 0]) is None
    assert crossing_point(t, [0, 1, 0, 2], [0, 0, 0, 0]) is None


def test_crossing_point_moves_continuously():
    # A value drifting through 0 at a grid point moves t* by about as much as the value, not by a grid step.
    t = [0.0, 0.5, 1.0]
    base = crossing_point(t, [1.0, 0.0, -1.0], [0, 0, 0])
    assert base == pytest.approx(0.5)
    for eps in (1e-6, -1e-6):
        moved = crossing_point(t, [1.0, eps, -1.0], [0, 0, 0])
        assert abs(moved - base) <= 1e-6


def test_crossing_point_matches_a_dense_search():
    # Reference: the first sign change of the piecewise-linear interpolant, found on a 200001-point grid.
    rng = np.random.default_rng(0)
    for _ in range(20):
        t = np.sort(rng.choice(np.linspace(0, 1, 1001), size=12, replace=False))
        first = np.cumsum(rng.normal(-0.1, 0.3, size=12)) + 0.5
        second = rng.normal(0, 0.05, size=12)
        dense = np.linspace(t[0], t[-1], 200001)
        diff = np.interp(dense, t, first) - np.interp(dense, t, second)
        sign = np.sign(diff[np.flatnonzero(diff)])
        flips = np.flatnonzero(sign != sign[0])
        got = crossing_point(t.tolist(), first.tolist(), second.tolist())
        if flips.size == 0:
            assert got is None
        else:
            expected = dense[np.flatnonzero(diff)][flips[0]]
            assert got == pytest.approx(expected, abs=2 * (t[-1] - t[0]) / 200000)


def test_window_mean_hand_worked():
    t, v = [0.0, 1.0, 2.0], [0.0, 2.0, 0.0]
    assert window_mean(t, v, 1.0, 1.0) == pytest.approx(1.0)    # the whole triangle: area 2 over width 2
    assert window_mean(t, v, 0.5, 0.5) == pytest.approx(1.0)    # [0, 1]: area 1 over width 1
    # [0.5, 1.5]: the interpolant is 1, 2, 1 at 0.5, 1, 1.5 -> area 0.75 + 0.75 over width 1.
    assert window_mean(t, v, 1.0, 0.5) == pytest.approx(1.5)
    assert window_mean(t, v, 0.0, 1.0) == pytest.approx(1.0)    # clipped to [0, 1]
    assert window_mean(t, v, 0.25, 0.0) == pytest.approx(0.5)   # no width: the value at the centre


def test_window_mean_matches_a_dense_average_and_is_continuous():
    rng = np.random.default_rng(1)
    t = np.linspace(0, 1, 21)
    v = rng.uniform(0, 1, size=21)
    for center, half in ((0.31, 0.05), (0.02, 0.05), (0.5, 0.2), (0.97, 0.1)):
        lo, hi = max(center - half, 0.0), min(center + half, 1.0)
        dense = np.linspace(lo, hi, 400001)
        assert window_mean(t, v, center, half) == pytest.approx(np.interp(dense, t, v).mean(), abs=1e-5)
    # A shift of the centre by 1e-6 moves the mean by at most 1e-6 * (max |v| / half width) * 2.
    a, b = window_mean(t, v, 0.31, 0.05), window_mean(t, v, 0.31 + 1e-6, 0.05)
    assert abs(a - b) <= 1e-6 * 2 * v.max() / 0.05


def test_neutral_point_hand_worked():
    t = [0.0, 0.5, 1.0]
    # P(A | A) - P(A | B): 0.8, 0.2, -0.8 -> t* = 0.5 + 0.5 * 0.2 / 1.0 = 0.6.
    point = neutral_point(t, [0.9, 0.5, 0.1], [0.1, 0.3, 0.9], [0.5, 0.4, 0.5], [0.8, 0.2, 0.6], half_width=0.1)
    assert point["t_star"] == pytest.approx(0.6)
    assert point["a_rate_at_t_star"] == pytest.approx(0.42)          # 0.4 + (0.1 / 0.5) * 0.1
    # Gap over [0.5, 0.7]: linear from 0.2 to 0.2 + 0.2 / 0.5 * 0.4 = 0.36 -> mean 0.28.
    assert point["parity_gap"] == pytest.approx(0.28)
    assert point["window"] == pytest.approx([0.5, 0.7])
    assert neutral_point(t, [0.9, 0.8, 0.7], [0.1, 0.2, 0.3], [0.5] * 3, [0.5] * 3, 0.1) is None


def test_clear_errors():
    with pytest.raises(ValueError, match="both attributes"):
        attribute_rates(torch.tensor([A, B]), torch.tensor([A, A]))
    with pytest.raises(ValueError, match="0 \\(A\\) or 1 \\(B\\)"):
        attribute_rates(torch.tensor([2, 0]), torch.tensor([A, B]))
    with pytest.raises(ValueError, match="no images in group"):
        group_a_rates(torch.tensor([A, B]), torch.tensor([0, 0]), 2)
    with pytest.raises(ValueError, match="increasing"):
        crossing_point([0.0, 0.0], [1, 0], [0, 1])
    with pytest.raises(ValueError, match="outside the grid"):
        value_at([0.0, 1.0], [0.0, 1.0], 1.5)
    with pytest.raises(ValueError, match="half_width"):
        window_mean([0.0, 1.0], [0.0, 1.0], 0.5, -0.1)
    with pytest.raises(ValueError, match="outside the grid"):
        window_mean([0.0, 1.0], [0.0, 1.0], 1.5, 0.1)
    with pytest.raises(ValueError, match="retrieved indices"):
        retrieval_a_shares(torch.tensor([[7]]), torch.tensor([A, B]))
