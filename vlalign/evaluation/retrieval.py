"""Retrieval from embeddings: chunked exact top-k search and Recall@k in both directions.

All functions take L2-normalized embeddings and score by dot product, in float32 (float64 when the embeddings
are float64). They never hold the full query-by-gallery similarity matrix: queries are processed
``query_chunk_size`` at a time and the gallery is scanned ``chunk_size`` items at a time, merging into a running
top-k, so memory is ``O(query_chunk_size * (k + chunk_size))`` whatever the gallery size (a 5,000-image,
25,000-caption COCO test set never forms its 5,000 x 25,000 matrix).

Ties are broken by gallery index, lower first: a ranking is the stable descending sort of the scores, so
results never depend on the chunk sizes or on how a sort routine happens to order equal values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DEFAULT_KS = (1, 5, 10)


def _check_pair(queries: torch.Tensor, keys: torch.Tensor) -> None:
    if queries.dim() != 2 or keys.dim() != 2:
        raise ValueError(f"expected 2-D embeddings [N, D], got {tuple(queries.shape)} and {tuple(keys.shape)}")
    if queries.shape[1] != keys.shape[1]:
        raise ValueError(f"embedding widths differ: {queries.shape[1]} vs {keys.shape[1]}")
    if queries.shape[0] == 0 or keys.shape[0] == 0:
        raise ValueError(f"retrieval needs at least one query and one gallery item, got {queries.shape[0]} and {keys.shape[0]}")


def _first_k_positions(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the positions of the first ``k`` entries of the stable descending sort of ``scores`` (ties:
    lower position first), in that order. Linear time per row: a full sort of every chunk was 10x slower.

    ``topk`` picks the right set unless the (k+1)-th largest value equals the k-th: then it chose among equal
    values, and only those rows (rare with real-valued embeddings) go through the exact tie rule, which costs
    ~10 topk's.
    """
    extra = min(k + 1, scores.shape[1])
    values, positions = scores.topk(extra, dim=1)
    if extra > k:
        ambiguous = values[:, k] == values[:, k - 1]
        positions = positions[:, :k]
        if bool(ambiguous.any()):
            rows = ambiguous.nonzero()[:, 0]
            positions = positions.clone()
            positions[rows] = _first_k_positions_with_ties(scores[rows], k)
    positions = positions.sort(dim=1).values  # ascending positions, so the stable sort below keeps ties in order
    order = scores.gather(1, positions).sort(dim=1, descending=True, stable=True).indices
    return positions.gather(1, order)


def _first_k_positions_with_ties(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` positions of the stable descending sort, by an explicit tie rule -> ``[Q, k]`` (any order)."""
    threshold = scores.topk(k, dim=1).values[:, -1:]
    above = scores > threshold
    tied = scores == threshold
    # All entries above the k-th value are in; the remaining places go to the earliest entries equal to it.
    chosen = above | (tied & (tied.cumsum(1) <= k - above.sum(1, keepdim=True)))
    return chosen.nonzero()[:, 1].view(scores.shape[0], k)  # row-major: ascending positions per row


def _merge(best_scores: torch.Tensor, best_index: torch.Tensor, scores: torch.Tensor, start: int, k: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge a running top-k (``best_*``, ``[Q, ≤k]``) with the scores of the next gallery items ``start …``.

    The kept entries precede the new ones and have lower indices, so position order is index order and the
    stable tie rule carries over.
    """
    scores = torch.cat([best_scores, scores], dim=1)
    keep = _first_k_positions(scores, min(k, scores.shape[1]))
    # Positions below `kept` point into the running top-k, the others into the new items (no [Q, N] index).
    kept = best_index.shape[1]
    index = keep - kept + start
    if kept:
        index = torch.where(keep < kept, best_index.gather(1, keep.clamp(max=kept - 1)), index)
    return scores.gather(1, keep), index


@torch.no_grad()
def top_k(queries: torch.Tensor, keys: torch.Tensor, k: int, chunk_size: int = 4096,
          query_chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` keys most similar (dot product) to each query -> (scores ``[Q, k]``, indices ``[Q, k]``).

    Rows are the first ``k`` entries of the stable descending sort of the query's scores over all keys (equal
    scores: lower key index first). Keys are scanned ``chunk_size`` at a time and merged into a running top-k,
    queries ``query_chunk_size`` at a time, so the full ``[Q, N]`` matrix is never formed.
    """
    _check_pair(queries, keys)
    if not 1 <= k <= keys.shape[0]:
        raise ValueError(f"k must be in [1, {keys.shape[0]}] (the gallery size), got {k}")
    if chunk_size < 1 or query_chunk_size < 1:
        raise ValueError(f"chunk_size and query_chunk_size must be >= 1, got {chunk_size} and {query_chunk_size}")
    if not (bool(torch.isfinite(queries).all()) and bool(torch.isfinite(keys).all())):
        raise ValueError("embeddings contain NaN or infinite values")
    dtype = torch.float64 if torch.float64 in (queries.dtype, keys.dtype) else torch.float32
    all_scores, all_index = [], []
    for q_start in range(0, queries.shape[0], query_chunk_size):
        q = queries[q_start: q_start + query_chunk_size].to(dtype)
        best_scores = torch.empty((q.shape[0], 0), dtype=dtype, device=q.device)
        best_index = torch.empty((q.shape[0], 0), dtype=torch.long, device=q.device)
        for start in range(0, keys.shape[0], chunk_size):
            chunk = keys[start: start + chunk_size].to(device=q.device, dtype=dtype)
            # The kept entries precede the new chunk and have lower indices, so position order is index order.
            best_scores, best_index = _merge(best_scores, best_index, q @ chunk.t(), start, k)
        all_scores.append(best_scores)
        all_index.append(best_index)
    return torch.cat(all_scores), torch.cat(all_index)


@torch.no_grad()
def top_k_both(queries: torch.Tensor, keys: torch.Tensor, k_queries: int, k_keys: int, chunk_size: int = 4096,
               query_chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k in both directions from one pass over the score blocks -> (indices ``[Q, k_queries]`` of each
    query's best keys, indices ``[K, k_keys]`` of each key's best queries).

    The same rankings as :func:`top_k` called twice (stable descending, lower index first on ties), for half
    the matrix products: each ``query_chunk_size × chunk_size`` block of scores updates the queries' running
    top-k and, transposed, the keys' running top-k. Never forms the full matrix.
    """
    _check_pair(queries, keys)
    if not 1 <= k_queries <= keys.shape[0] or not 1 <= k_keys <= queries.shape[0]:
        raise ValueError(f"k must be in [1, {keys.shape[0]}] and [1, {queries.shape[0]}] (the gallery sizes), got "
                         f"{k_queries} and {k_keys}")
    if chunk_size < 1 or query_chunk_size < 1:
        raise ValueError(f"chunk_size and query_chunk_size must be >= 1, got {chunk_size} and {query_chunk_size}")
    if not (bool(torch.isfinite(queries).all()) and bool(torch.isfinite(keys).all())):
        raise ValueError("embeddings contain NaN or infinite values")
    dtype = torch.float64 if torch.float64 in (queries.dtype, keys.dtype) else torch.float32
    device = queries.device
    key_scores = [torch.empty((0, 0), dtype=dtype, device=device) for _ in range(0, keys.shape[0], chunk_size)]
    key_index = [torch.empty((0, 0), dtype=torch.long, device=device) for _ in key_scores]
    query_index = []
    for q_start in range(0, queries.shape[0], query_chunk_size):
        q = queries[q_start: q_start + query_chunk_size].to(dtype)
        best_scores = torch.empty((q.shape[0], 0), dtype=dtype, device=device)
        best_index = torch.empty((q.shape[0], 0), dtype=torch.long, device=device)
        for c, start in enumerate(range(0, keys.shape[0], chunk_size)):
            chunk = keys[start: start + chunk_size].to(device=device, dtype=dtype)
            block = q @ chunk.t()
            best_scores, best_index = _merge(best_scores, best_index, block, start, k_queries)
            if key_scores[c].shape[0] == 0:
                key_scores[c] = torch.empty((chunk.shape[0], 0), dtype=dtype, device=device)
                key_index[c] = torch.empty((chunk.shape[0], 0), dtype=torch.long, device=device)
            key_scores[c], key_index[c] = _merge(key_scores[c], key_index[c], block.t().contiguous(), q_start, k_keys)
        query_index.append(best_index)
    return torch.cat(query_index), torch.cat(key_index)


def top_k_images(text_embeddings: torch.Tensor, image_embeddings: torch.Tensor, k: int = 10,
                 chunk_size: int = 4096) -> torch.Tensor:
    """For each text prompt, the indices of its ``k`` top-retrieved images (best first) -> ``[P, k]``."""
    return top_k(text_embeddings, image_embeddings, k, chunk_size)[1]


def _check_ks(ks: Sequence[int], limit: int, what: str) -> list[int]:
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if ks[-1] > limit:
        raise ValueError(f"largest k ({ks[-1]}) exceeds {what} ({limit})")
    return ks


def recall_from_ranking(ranked: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Recall@k from ranked lists: ``relevant[q, j]`` says whether the j-th item ranked for query q is relevant;
    a query hits at k when one of its first k items is. -> ``{k: share of queries that hit}``."""
    if relevant.dim() != 2 or relevant.shape != ranked.shape:
        raise ValueError(f"relevant must match ranked [Q, K], got {tuple(relevant.shape)} and {tuple(ranked.shape)}")
    ks = _check_ks(ks, ranked.shape[1], "the ranked list length")
    return {k: float(relevant[:, :k].any(dim=1).double().mean()) for k in ks}


def recall_at_k(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, image_labels: torch.Tensor,
                text_labels: torch.Tensor, ks: Sequence[int] = DEFAULT_KS, chunk_size: int = 4096) -> dict[str, float]:
    """Text->image and image->text Recall@k: the share of queries with a relevant item among their top k.

    An image and a text are relevant to each other when their labels are equal. For paired captions (COCO
    style) use ``image_labels = arange(N)`` and give each caption the index of its image; for class prompts use
    class labels on both sides. Returns ``{"text_to_image_R@1": …, "image_to_text_R@1": …, …}``.
    """
    if image_labels.shape != (image_embeddings.shape[0],):
        raise ValueError(f"image_labels must have shape ({image_embeddings.shape[0]},), got {tuple(image_labels.shape)}")
    if text_labels.shape != (text_embeddings.shape[0],):
        raise ValueError(f"text_labels must have shape ({text_embeddings.shape[0]},), got {tuple(text_labels.shape)}")
    ks = _check_ks(ks, min(image_embeddings.shape[0], text_embeddings.shape[0]),
                   f"the number of images ({image_embeddings.shape[0]}) or texts")
    t2i_index, i2t_index = top_k_both(text_embeddings, image_embeddings, ks[-1], ks[-1], chunk_size)
    image_labels, text_labels = image_labels.to(t2i_index.device), text_labels.to(t2i_index.device)
    t2i = recall_from_ranking(t2i_index, image_labels[t2i_index] == text_labels[:, None], ks)
    i2t = recall_from_ranking(i2t_index, text_labels[i2t_index] == image_labels[:, None], ks)
    out = {f"text_to_image_R@{k}": v for k, v in t2i.items()}
    out.update({f"image_to_text_R@{k}": v for k, v in i2t.items()})
    return out


def check_text_to_image(text_to_image: torch.Tensor, n_texts: int, n_images: int) -> None:
    """Raise ValueError unless ``text_to_image`` gives every text the index of an image and every image a text."""
    if text_to_image.shape != (n_texts,) or text_to_image.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"text_to_image must be an integer tensor of shape ({n_texts},), got "
                         f"{text_to_image.dtype} {tuple(text_to_image.shape)}")
    if n_texts and (int(text_to_image.min()) < 0 or int(text_to_image.max()) >= n_images):
        raise ValueError(f"text_to_image must index images 0..{n_images - 1}")
    if torch.bincount(text_to_image.long(), minlength=n_images).min() == 0:
        raise ValueError("every image needs at least one caption in text_to_image")


def retrieval_recall(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, text_to_image: torch.Tensor,
                     ks: Sequence[int] = DEFAULT_KS, chunk_size: int = 4096, query_chunk_size: int = 1024) -> dict:
    """Image-caption Recall@k in both directions, as the CLIP paper and COCO/Flickr30k retrieval count it.

    - text->image (``t2i``): each caption is a query over the N images; it hits at k when *its own* image is
      among its k highest-scoring images.
    - image->text (``i2t``): each image is a query over all T captions; it hits at k when *any* of its captions
      (typically five) is among its k highest-scoring captions.

    R@k is the share of queries that hit; ``mR`` is the mean of R@k over both directions and all ``ks`` (the
    AdvLoRA paper's headline). ``text_to_image[t]`` is the index of caption t's image. Rankings are stable
    descending sorts (ties: lower index first). Returns fractions:
    ``{"i2t": {"r1": …, "r5": …, "r10": …}, "t2i": {…}, "mR": …}``.
    """
    n_images, n_texts = image_embeddings.shape[0], text_embeddings.shape[0]
    check_text_to_image(text_to_image, n_texts, n_images)
    ks = _check_ks(ks, n_images, "the number of images")
    kmax = ks[-1]
    owner = text_to_image.long()
    t2i_index, i2t_index = top_k_both(text_embeddings, image_embeddings, kmax, kmax, chunk_size, query_chunk_size)
    t2i = recall_from_ranking(t2i_index, t2i_index == owner.to(t2i_index.device)[:, None], ks)
    i2t_hits = owner.to(i2t_index.device)[i2t_index] == torch.arange(n_images, device=i2t_index.device)[:, None]
    i2t = recall_from_ranking(i2t_index, i2t_hits, ks)
    return recall_summary(i2t, t2i)


def recall_summary(i2t: dict[int, float], t2i: dict[int, float]) -> dict:
    """``{"i2t": {"r1": …}, "t2i": {"r1": …}, "mR": mean of all}`` from per-k recalls of both directions."""
    values = [*i2t.values(), *t2i.values()]
    return {"i2t": {f"r{k}": v for k, v in i2t.items()}, "t2i": {f"r{k}": v for k, v in t2i.items()},
            "mR": sum(values) / len(values)}


def rerank(candidates: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Reorder each row of ``candidates`` ``[Q, K]`` by ``scores`` ``[Q, K]`` (descending; ties keep the
    original order, i.e. the first-stage ranking decides)."""
    if candidates.shape != scores.shape or candidates.dim() != 2:
        raise ValueError(f"candidates and scores must both be [Q, K], got {tuple(candidates.shape)} and {tuple(scores.shape)}")
    order = scores.sort(dim=1, descending=True, stable=True).indices
    return candidates.gather(1, order)
