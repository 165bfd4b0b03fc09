"""Bias metrics on hand-worked examples."""

import pytest
import torch

from vlalign.evaluation.bias import (
    attribute_rates, crossing_point, group_a_rates, per_group_skew, retrieval_a_shares, retrieval_parity_gap,
    stereotype_skew, value_at,
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
    with pytest.raises(ValueError, match="retrieved indices"):
        retrieval_a_shares(torch.tensor([[7]]), torch.tensor([A, B]))
