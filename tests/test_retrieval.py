"""Chunked retrieval against a full-matrix brute-force reference, and hand-worked Recall@k."""

import pytest
import torch
import torch.nn.functional as F

from vlalign.evaluation.retrieval import recall_at_k, top_k, top_k_images


def _embeddings(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _brute_recall(images, texts, image_labels, text_labels, k):
    """Full similarity matrix, full argsort, an explicit loop over queries."""
    sims = (texts.double() @ images.double().t())
    t2i = sum(bool((image_labels[sims[q].argsort(descending=True)[:k]] == text_labels[q]).any()) for q in range(len(texts)))
    i2t = sum(bool((text_labels[sims[:, q].argsort(descending=True)[:k]] == image_labels[q]).any()) for q in range(len(images)))
    return t2i / len(texts), i2t / len(images)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
def test_top_k_matches_full_sort(chunk_size):
    queries, keys = _embeddings(13, 8, 0), _embeddings(150, 8, 1)
    scores, index = top_k(queries, keys, 10, chunk_size)
    full = queries.double() @ keys.double().t()
    expected = full.argsort(dim=1, descending=True)[:, :10]
    assert torch.equal(index, expected)
    assert torch.allclose(scores.double(), full.gather(1, expected), atol=1e-6)
    assert torch.equal(top_k_images(queries, keys, 10, chunk_size), expected)


@pytest.mark.parametrize("chunk_size", [3, 50, 4096])
def test_recall_matches_brute_force_paired_captions(chunk_size):
    # 40 images with two captions each, noisy copies of the image embeddings: a COCO-like paired setting.
    images = _embeddings(40, 16, 2)
    text_labels = torch.arange(40).repeat_interleave(2)
    texts = F.normalize(images[text_labels] + 0.9 * _embeddings(80, 16, 3), dim=-1)
    image_labels = torch.arange(40)
    got = recall_at_k(images, texts, image_labels, text_labels, ks=(1, 5, 10), chunk_size=chunk_size)
    for k in (1, 5, 10):
        t2i, i2t = _brute_recall(images, texts, image_labels, text_labels, k)
        assert got[f"text_to_image_R@{k}"] == pytest.approx(t2i)
        assert got[f"image_to_text_R@{k}"] == pytest.approx(i2t)
    assert 0 < got["text_to_image_R@1"] < 1  # the noise makes the task neither trivial nor hopeless


def test_recall_hand_worked_example():
    # Two classes on the unit circle; texts are the class directions. Image 2 is a class-0 image that points
    # at class 1, so it misses at k=1 and hits at k=2.
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    image_labels = torch.tensor([0, 1, 0])
    text_labels = torch.tensor([0, 1])
    got = recall_at_k(images, texts, image_labels, text_labels, ks=(1, 2))
    assert got["image_to_text_R@1"] == pytest.approx(2 / 3)
    assert got["image_to_text_R@2"] == pytest.approx(1.0)
    assert got["text_to_image_R@1"] == pytest.approx(1.0)  # each text's best image has its label


def test_clear_errors():
    a, b = _embeddings(5, 4, 0), _embeddings(6, 4, 1)
    with pytest.raises(ValueError, match="k must be"):
        top_k(a, b, 7)
    with pytest.raises(ValueError, match="widths differ"):
        top_k(a, _embeddings(6, 3, 1), 2)
    with pytest.raises(ValueError, match="at least one"):
        top_k(a[:0], b, 2)
    with pytest.raises(ValueError, match="image_labels"):
        recall_at_k(b, a, torch.arange(5), torch.arange(5))
    with pytest.raises(ValueError, match="largest k"):
        recall_at_k(b, a, torch.arange(6), torch.arange(5), ks=(1, 6))
