"""Deterministic k-means (k-means++ seeding, Lloyd iterations) in torch, for AdvLoRA's clustering-based init."""

from __future__ import annotations

import torch


def _squared_distances(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    return (points.pow(2).sum(1, keepdim=True) - 2 * points @ centres.t() + centres.pow(2).sum(1)[None]).clamp_min(0)


def kmeans(points: torch.Tensor, k: int, seed: int = 0, iterations: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the rows of ``points`` ``[n, d]`` into ``k`` groups -> (centres ``[k, d]``, labels ``[n]``).

    k-means++ seeding (Arthur & Vassilvitskii 2007) from a ``torch.Generator`` seeded with ``seed``, then Lloyd
    iterations until the assignment stops changing (at most ``iterations``). Computed in float64 on the CPU,
    so the result depends only on (points, k, seed). Ties go to the lower centre index; a cluster that empties
    is re-seeded with the point farthest from its centre, so every centre is the mean of a non-empty cluster.
    Centres are returned in the dtype of ``points``.
    """
    if points.dim() != 2 or points.shape[0] == 0:
        raise ValueError(f"kmeans needs points [n >= 1, d], got {tuple(points.shape)}")
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the number of points), got {k}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    x = points.detach().to("cpu", torch.float64)
    generator = torch.Generator().manual_seed(int(seed))
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    nearest = _squared_distances(x, x[chosen[-1]][None])[:, 0]
    for _ in range(1, k):
        total = float(nearest.sum())
        # All remaining points coincide with a centre: take the first point not yet chosen.
        pick = int(torch.multinomial(nearest / total, 1, generator=generator)) if total > 0 else \
            next(i for i in range(n) if i not in chosen)
        chosen.append(pick)
        nearest = torch.minimum(nearest, _squared_distances(x, x[pick][None])[:, 0])
    centres = x[chosen].clone()
    labels = torch.full((n,), -1, dtype=torch.long)
    for _ in range(iterations):
        distances = _squared_distances(x, centres)
        new_labels = distances.argmin(1)
        counts = torch.bincount(new_labels, minlength=k)
        for empty in (counts == 0).nonzero().flatten().tolist():
            own = distances.gather(1, new_labels[:, None])[:, 0]
            own[counts[new_labels] <= 1] = -1.0  # never take the last point of another cluster
            far = int(own.argmax())
            counts[new_labels[far]] -= 1
            new_labels[far] = empty
            counts[empty] = 1
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
        centres = torch.zeros_like(centres).index_add_(0, labels, x) / counts.clamp_min(1)[:, None].to(x.dtype)
    return centres.to(points.dtype), labels


def inertia(points: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor) -> float:
    """Sum of squared distances of the points to their centres (the k-means objective)."""
    return float((points.double() - centres.double()[labels]).pow(2).sum())
