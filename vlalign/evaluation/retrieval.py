"""Retrieval from embeddings: chunked top-k search and Recall@k in both directions.

All functions take L2-normalized embeddings (any float dtype; scores are computed in float32) and never
hold the full query-by-gallery similarity matrix: the gallery is scanned in chunks and a running top-k is
kept, so memory is ``O(queries * (k + chunk_size))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _check_pair(queries: torch.Tensor, keys: torch.Tensor) -> None:
    if queries.dim() != 2 or keys.dim() != 2:
        raise ValueError(f"expected 2-D embeddings [N, D], got {tuple(queries.shape)} and {tuple(keys.shape)}")
    if queries.shape[1] != keys.shape[1]:
        raise ValueError(f"embedding widths differ: {queries.shape[1]} vs {keys.shape[1]}")
    if queries.shape[0] == 0 or keys.shape[0] == 0:
        raise ValueError(f"retrieval needs at least one query and one gallery item, got {queries.shape[0]} and {keys.shape[0]}")


@torch.no_grad()
def top_k(queries: torch.Tensor, keys: torch.Tensor, k: int, chunk_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` keys most similar (dot product) to each query -> (scores ``[Q, k]``, indices ``[Q, k]``).

    Rows are sorted by descending score. The keys are scanned ``chunk_size`` at a time and merged into a running
    top-k, so the full ``[Q, N]`` matrix is never formed.
    """
    _check_pair(queries, keys)
    if not 1 <= k <= keys.shape[0]:
        raise ValueError(f"k must be in [1, {keys.shape[0]}] (the gallery size), got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    queries = queries.float()
    best_scores = torch.full((queries.shape[0], 0), float("-inf"), device=queries.device)
    best_index = torch.empty((queries.shape[0], 0), dtype=torch.long, device=queries.device)
    for start in range(0, keys.shape[0], chunk_size):
        chunk = keys[start: start + chunk_size].float().to(queries.device)
        scores = torch.cat([best_scores, queries @ chunk.t()], dim=1)
        index = torch.cat([best_index, torch.arange(start, start + chunk.shape[0], device=queries.device).expand(queries.shape[0], -1)], dim=1)
        best_scores, order = scores.topk(min(k, scores.shape[1]), dim=1)
        best_index = index.gather(1, order)
    return best_scores, best_index


def top_k_images(text_embeddings: torch.Tensor, image_embeddings: torch.Tensor, k: int = 10,
                 chunk_size: int = 4096) -> torch.Tensor:
    """For each text prompt, the indices of its ``k`` top-retrieved images (best first) -> ``[P, k]``."""
    return top_k(text_embeddings, image_embeddings, k, chunk_size)[1]


def _recall(queries: torch.Tensor, keys: torch.Tensor, query_labels: torch.Tensor, key_labels: torch.Tensor,
            ks: Sequence[int], chunk_size: int) -> dict[int, float]:
    _, index = top_k(queries, keys, max(ks), chunk_size)
    hit = key_labels.to(index.device)[index] == query_labels.to(index.device)[:, None]  # [Q, kmax]
    return {k: float(hit[:, :k].any(dim=1).float().mean()) for k in ks}


def recall_at_k(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, image_labels: torch.Tensor,
                text_labels: torch.Tensor, ks: Sequence[int] = (1, 5, 10), chunk_size: int = 4096) -> dict[str, float]:
    """Text->image and image->text Recall@k: the share of queries with a relevant item among their top k.

    An image and a text are relevant to each other when their labels are equal. For paired captions (COCO
    style) use ``image_labels = arange(N)`` and give each caption the index of its image; for class prompts use
    class labels on both sides. Returns ``{"text_to_image_R@1": …, "image_to_text_R@1": …, …}``.
    """
    if image_labels.shape != (image_embeddings.shape[0],):
        raise ValueError(f"image_labels must have shape ({image_embeddings.shape[0]},), got {tuple(image_labels.shape)}")
    if text_labels.shape != (text_embeddings.shape[0],):
        raise ValueError(f"text_labels must have shape ({text_embeddings.shape[0]},), got {tuple(text_labels.shape)}")
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if ks[-1] > min(image_embeddings.shape[0], text_embeddings.shape[0]):
        raise ValueError(f"largest k ({ks[-1]}) exceeds the number of images ({image_embeddings.shape[0]}) "
                         f"or texts ({text_embeddings.shape[0]})")
    t2i = _recall(text_embeddings, image_embeddings, text_labels, image_labels, ks, chunk_size)
    i2t = _recall(image_embeddings, text_embeddings, image_labels, text_labels, ks, chunk_size)
    out = {f"text_to_image_R@{k}": v for k, v in t2i.items()}
    out.update({f"image_to_text_R@{k}": v for k, v in i2t.items()})
    return out
