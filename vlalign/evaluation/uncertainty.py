"""How precisely a mean over evaluated samples is known: the standard error of an accuracy and of the difference of
two models' accuracies on the same samples (paired).

For per-sample scores s₁ … sₙ (1/0 for exact match) the mean's standard error is sd(s) / √n with the sample
standard deviation (n − 1 in the denominator); for 0/1 scores that is √(p(1 − p) / (n − 1)), the binomial one up
to n / (n − 1). Two models scored on the same samples are compared through the per-sample differences
dᵢ = aᵢ − bᵢ: samples both get right or both get wrong add nothing to the spread, so the paired standard error is
smaller than the unpaired √(SE_a² + SE_b²) whenever the models tend to fail on the same samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def standard_error(scores: Sequence[float]) -> float:
    """Standard error of the mean of ``scores`` (sample standard deviation / √n); 0 for fewer than two samples."""
    n = len(scores)
    if n < 2:
        return 0.0
    mean = sum(scores) / n
    return math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1) / n)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean of ``a[i] − b[i]`` over samples scored by both models, and its (paired) standard error."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same non-empty samples for both models, got {len(a)} and {len(b)} scores")
    differences = [x - y for x, y in zip(a, b)]
    return sum(differences) / len(differences), standard_error(differences)
