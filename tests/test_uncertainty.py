"""vlalign.evaluation.uncertainty against the statistics module, a hand-worked example and the binomial formula."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from vlalign.evaluation.uncertainty import paired_difference, standard_error


def test_standard_error_is_the_sample_sd_over_root_n():
    rng = random.Random(3)
    scores = [rng.random() for _ in range(57)]
    assert abs(standard_error(scores) - statistics.stdev(scores) / math.sqrt(57)) < 1e-12
    assert standard_error([0.7]) == 0.0 and standard_error([]) == 0.0


def test_for_exact_match_scores_it_is_the_binomial_standard_error():
    scores = [1] * 54 + [0] * 46
    p, n = 0.54, 100
    assert abs(standard_error(scores) - math.sqrt(p * (1 - p) / (n - 1))) < 1e-12


def test_paired_difference_hand_worked():
    # differences 0, 1, 0, -1: mean 0, sample variance 2/3, standard error sqrt(2/3) / 2
    mean, se = paired_difference([1, 1, 0, 0], [1, 0, 0, 1])
    assert mean == 0.0 and abs(se - math.sqrt(2 / 3) / 2) < 1e-12


def test_pairing_removes_what_both_models_share():
    rng = random.Random(0)
    shared = [rng.random() < 0.5 for _ in range(400)]
    a = [int(s or rng.random() < 0.1) for s in shared]
    b = [int(s and rng.random() > 0.05) for s in shared]
    _, paired = paired_difference(a, b)
    unpaired = math.hypot(standard_error(a), standard_error(b))
    assert paired < 0.5 * unpaired


def test_paired_difference_refuses_unmatched_samples():
    with pytest.raises(ValueError, match="same non-empty samples"):
        paired_difference([1, 0], [1])
    with pytest.raises(ValueError, match="same non-empty samples"):
        paired_difference([], [])
