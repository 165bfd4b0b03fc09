"""Frozen quantities (reference logits, reference embeddings, cached features) computed once, in fixed batches.

On some CPUs a float depends on how a batch is composed, so a value computed lazily for whichever examples a
step happens to draw would differ between an uninterrupted and a resumed run. Computing every frozen value
once, over the whole dataset in consecutive batches of a fixed size, makes it the same in both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

#: Batch size of every frozen computation; a constant so that the values never depend on a training setting.
FROZEN_BATCH = 256


@torch.no_grad()
def precompute(dataset: Dataset, fn: Callable[[dict[str, Any]], torch.Tensor], collate: Callable | None = None,
               batch_size: int = FROZEN_BATCH, num_workers: int = 0) -> torch.Tensor:
    """``fn`` applied to consecutive batches of ``dataset`` (in index order), on the CPU: row ``i`` belongs to the
    item whose ``"index"`` is ``i``. ``fn`` takes a collated batch and returns one row per item in it. Rows of items
    a skipping collate function dropped (undecodable images) are NaN; those items are never trained on."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate or default_collate,
                        num_workers=num_workers)
    out: torch.Tensor | None = None
    for batch in loader:
        rows = fn(batch).detach().cpu()
        index = torch.as_tensor(batch["index"])
        if rows.shape[0] != index.shape[0]:
            raise RuntimeError(f"precompute's function returned {rows.shape[0]} rows for a batch of {index.shape[0]}")
        if out is None:
            fill = float("nan") if rows.is_floating_point() else -1
            out = torch.full((len(dataset), *rows.shape[1:]), fill, dtype=rows.dtype)
        out[index] = rows
    if out is None:
        raise ValueError("cannot precompute over an empty dataset")
    return out
