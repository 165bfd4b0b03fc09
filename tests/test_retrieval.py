"""Chunked retrieval against a full-matrix brute-force reference, and hand-worked Recall@k."""

import pytest
import torch
import torch.nn.functional as F

from vlalign.evaluation.retrieval import recall_at_k, top_k, top_k_both, top_k_images


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


# --- image-caption Recall@k in both directions (COCO / CLIP-paper definitions) ----------------------------

from vlalign.evaluation.retrieval import recall_from_ranking, rerank, retrieval_recall  # noqa: E402


def _stable_ranking(scores: list[float]) -> list[int]:
    """Indices by descending score, ties by ascending index: an explicit, sort-free selection loop."""
    remaining = list(range(len(scores)))
    ranking = []
    while remaining:
        best = remaining[0]
        for j in remaining[1:]:
            if scores[j] > scores[best]:
                best = j
        ranking.append(best)
        remaining.remove(best)
    return ranking


def _brute_image_caption_recall(images, texts, owner, ks):
    sims = (images.double() @ texts.double().t()).tolist()  # [N, T], one full matrix
    n, t = len(sims), len(sims[0])
    t2i = {k: 0 for k in ks}
    i2t = {k: 0 for k in ks}
    for q in range(t):
        ranking = _stable_ranking([sims[i][q] for i in range(n)])
        for k in ks:
            t2i[k] += int(owner[q]) in ranking[:k]
    for i in range(n):
        ranking = _stable_ranking(sims[i])
        for k in ks:
            i2t[k] += any(int(owner[c]) == i for c in ranking[:k])
    return {k: v / n for k, v in i2t.items()}, {k: v / t for k, v in t2i.items()}


def _paired(n_images: int, counts: list[int], noise: float, seed: int, d: int = 12):
    images = _embeddings(n_images, d, seed)
    owner = torch.repeat_interleave(torch.arange(n_images), torch.tensor(counts))
    texts = F.normalize(images[owner] + noise * _embeddings(len(owner), d, seed + 1), dim=-1)
    return images, texts, owner


@pytest.mark.parametrize("chunk_size, query_chunk_size", [(1, 1), (3, 7), (50, 4), (10_000, 10_000)])
def test_image_caption_recall_matches_a_brute_force_loop(chunk_size, query_chunk_size):
    counts = [5] * 20 + [1, 7, 6] + [5] * 7  # COCO has a few images with six or seven captions
    images, texts, owner = _paired(30, counts, 2.5, 4)
    got = retrieval_recall(images.double(), texts.double(), owner, (1, 5, 10), chunk_size, query_chunk_size)
    i2t, t2i = _brute_image_caption_recall(images, texts, owner, (1, 5, 10))
    for k in (1, 5, 10):
        assert got["i2t"][f"r{k}"] == pytest.approx(i2t[k], abs=1e-12)
        assert got["t2i"][f"r{k}"] == pytest.approx(t2i[k], abs=1e-12)
    assert got["mR"] == pytest.approx((sum(i2t.values()) + sum(t2i.values())) / 6)
    assert 0 < got["t2i"]["r1"] < got["t2i"]["r10"] < 1  # neither trivial nor hopeless


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 100])
def test_ties_are_broken_by_index_whatever_the_chunking(chunk_size):
    # Embeddings with entries in {-1, 0, 1}: every dot product is a small integer, so ties are everywhere and
    # exact in floating point. The brute-force loop ranks ties by ascending index.
    g = torch.Generator().manual_seed(5)
    images = torch.randint(-1, 2, (12, 3), generator=g).float()
    owner = torch.arange(12).repeat_interleave(3)
    texts = torch.randint(-1, 2, (36, 3), generator=g).float()
    texts[::3] = images  # some exact matches, and duplicated vectors
    got = retrieval_recall(images, texts, owner, (1, 2, 5), chunk_size, query_chunk_size=chunk_size)
    i2t, t2i = _brute_image_caption_recall(images, texts, owner, (1, 2, 5))
    assert got["i2t"] == {f"r{k}": pytest.approx(v) for k, v in i2t.items()}
    assert got["t2i"] == {f"r{k}": pytest.approx(v) for k, v in t2i.items()}
    scores, index = top_k(texts, images, 12, chunk_size, chunk_size)
    for q in range(36):
        assert index[q].tolist() == _stable_ranking((images @ texts[q]).tolist())


def test_image_caption_recall_hand_worked_example():
    # Three images on the axes of R^3 and two captions each (captions 2i, 2i+1 belong to image i).
    images = torch.eye(3)
    texts = torch.tensor([
        [1.0, 0.0, 0.0],   # 0 -> image 0: its own image first
        [0.0, 0.6, 0.8],   # 1 -> image 0: ranks image 2 (0.8), image 1 (0.6), image 0 (0): miss at k = 1, 2
        [0.0, 1.0, 0.0],   # 2 -> image 1: hit
        [0.8, 0.6, 0.0],   # 3 -> image 1: ranks image 0, then image 1: hit at k = 2
        [0.6, 0.0, 0.8],   # 4 -> image 2: hit
        [0.0, 0.0, 1.0],   # 5 -> image 2: hit
    ])
    owner = torch.tensor([0, 0, 1, 1, 2, 2])
    got = retrieval_recall(images, texts, owner, ks=(1, 2))
    # t2i: R@1 = hits of captions 0, 2, 4, 5 = 4/6; R@2 adds caption 3 = 5/6.
    assert got["t2i"] == {"r1": pytest.approx(4 / 6), "r2": pytest.approx(5 / 6)}
    # i2t: image 0 ranks caption 0 (1.0) first: hit. Image 1 ranks captions 2 (1.0): hit. Image 2 ranks
    # caption 5 (1.0): hit. Every image hits at k = 1.
    assert got["i2t"] == {"r1": 1.0, "r2": 1.0}
    assert got["mR"] == pytest.approx((4 / 6 + 5 / 6 + 2) / 4)


def test_no_full_similarity_matrix_is_formed(monkeypatch):
    """Every score block is at most query_chunk_size x (k + chunk_size)."""
    images, texts, owner = _paired(40, [5] * 40, 0.5, 7)
    shapes = []
    original = torch.Tensor.__matmul__

    def spy(a, b):
        out = original(a, b)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    retrieval_recall(images, texts, owner, chunk_size=16, query_chunk_size=8)
    assert shapes and max(a * b for a, b in shapes) <= 8 * 16


def test_recall_from_ranking_and_rerank():
    ranked = torch.tensor([[4, 2, 9], [1, 0, 3]])
    relevant = torch.tensor([[False, True, False], [False, False, False]])
    assert recall_from_ranking(ranked, relevant, (1, 2, 3)) == {1: 0.0, 2: 0.5, 3: 0.5}
    # Re-scoring: ties keep the first-stage order.
    assert rerank(ranked, torch.tensor([[0.1, 0.5, 0.5], [2.0, 2.0, 3.0]])).tolist() == [[2, 9, 4], [3, 1, 0]]


def test_image_caption_recall_errors():
    images, texts, owner = _paired(4, [2] * 4, 0.1, 8)
    with pytest.raises(ValueError, match="text_to_image must be an integer tensor"):
        retrieval_recall(images, texts, owner[:-1])
    with pytest.raises(ValueError, match="every image needs"):
        retrieval_recall(images, texts, torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="largest k"):
        retrieval_recall(images, texts, owner, ks=(1, 5))


@pytest.mark.parametrize("chunk_size, query_chunk_size", [(1, 1), (2, 5), (5, 2), (100, 100)])
def test_both_directions_in_one_pass_match_two_top_k_calls(chunk_size, query_chunk_size):
    # Integer-valued embeddings: ties everywhere, so the stable tie rule is exercised in both directions.
    g = torch.Generator().manual_seed(11)
    queries = torch.randint(-1, 2, (23, 3), generator=g).float()
    keys = torch.randint(-1, 2, (9, 3), generator=g).float()
    forward, backward = top_k_both(queries, keys, 4, 6, chunk_size, query_chunk_size)
    assert torch.equal(forward, top_k(queries, keys, 4)[1])
    assert torch.equal(backward, top_k(keys, queries, 6)[1])
    with pytest.raises(ValueError, match="k must be in"):
        top_k_both(queries, keys, 10, 2)
