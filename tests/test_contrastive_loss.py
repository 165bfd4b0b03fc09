"""clip_contrastive_loss against a float64 brute-force reference written with loops."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vlalign.losses.contrastive import clip_contrastive_loss


def reference(logits: torch.Tensor, ids: list[int] | None = None) -> float:
    """Symmetric InfoNCE, one cross-entropy at a time; pairs with equal caption ids share the target mass."""
    values = logits.detach().double().tolist()
    n = len(values)
    ids = list(range(n)) if ids is None else list(ids)

    def cross_entropy(row: list[float], positives: list[int]) -> float:
        top = max(row)
        log_norm = top + math.log(sum(math.exp(v - top) for v in row))
        return -sum((row[j] - log_norm) / len(positives) for j in positives)

    image_to_text = text_to_image = 0.0
    for i in range(n):
        positives = [j for j in range(n) if ids[j] == ids[i]]
        image_to_text += cross_entropy(values[i], positives)
        text_to_image += cross_entropy([values[k][i] for k in range(n)], positives)
    return 0.5 * (image_to_text + text_to_image) / n


def random_logits(n: int, seed: int, scale: float = 5.0) -> torch.Tensor:
    return scale * torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_plain_clip_loss_matches_reference(n):
    logits = random_logits(n, n)
    assert float(clip_contrastive_loss(logits)) == pytest.approx(reference(logits), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("ids", [[0, 0, 1, 2, 2, 2], [3, 3, 3, 3], [7, 1, 7, 1, 5], [0, 1, 2, 0]])
def test_duplicate_captions_match_reference(ids):
    logits = random_logits(len(ids), sum(ids))
    loss = clip_contrastive_loss(logits, torch.tensor(ids))
    assert float(loss) == pytest.approx(reference(logits, ids), rel=1e-12, abs=1e-12)
    # Duplicates are positives, not negatives: the loss differs from plain CLIP's.
    assert float(loss) != pytest.approx(reference(logits), rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 9), seed=st.integers(0, 10_000))
def test_random_ids_match_reference(data, n, seed):
    ids = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    logits = random_logits(n, seed)
    expected = reference(logits, ids)
    assert float(clip_contrastive_loss(logits, torch.tensor(ids))) == pytest.approx(expected, rel=1e-10, abs=1e-10)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 10_000))
def test_distinct_ids_equal_plain_clip_loss(n, seed):
    logits = random_logits(n, seed)
    ids = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) * 3 + 11  # distinct, arbitrary values
    torch.testing.assert_close(clip_contrastive_loss(logits, ids), clip_contrastive_loss(logits), rtol=1e-12, atol=1e-12)


def test_hand_worked_values():
    # Uniform logits: every softmax is uniform, so each cross-entropy is log n (with or without duplicates).
    zeros = torch.zeros(4, 4, dtype=torch.float64)
    assert float(clip_contrastive_loss(zeros)) == pytest.approx(math.log(4))
    assert float(clip_contrastive_loss(zeros, torch.tensor([0, 0, 1, 1]))) == pytest.approx(math.log(4))
    # Two pairs, both captions identical: targets are uniform, predictions [a, b] per row.
    a, b = 2.0, -1.0
    logits = torch.tensor([[a, b], [b, a]], dtype=torch.float64)
    log_norm = math.log(math.exp(a) + math.exp(b))
    assert float(clip_contrastive_loss(logits)) == pytest.approx(log_norm - a)
    assert float(clip_contrastive_loss(logits, torch.tensor([5, 5]))) == pytest.approx(log_norm - (a + b) / 2)


def test_gradient_matches_finite_differences():
    logits = random_logits(5, 0, scale=1.0).requires_grad_(True)
    ids = torch.tensor([0, 1, 0, 2, 1])
    assert torch.autograd.gradcheck(lambda x: clip_contrastive_loss(x, ids), (logits,))
    assert torch.autograd.gradcheck(clip_contrastive_loss, (logits,))


def test_float32_and_large_logits_are_stable():
    logits = random_logits(8, 1, scale=300.0)
    loss32 = clip_contrastive_loss(logits.float(), torch.tensor([0, 1, 1, 2, 3, 4, 4, 4]))
    assert loss32.dtype == torch.float32 and torch.isfinite(loss32)
    assert float(loss32) == pytest.approx(reference(logits, [0, 1, 1, 2, 3, 4, 4, 4]), rel=1e-5)


def test_non_square_logits_are_rejected():
    with pytest.raises(ValueError, match=r"square \[B, B\] logit matrix, got \(2, 3\)"):
        clip_contrastive_loss(torch.zeros(2, 3))
