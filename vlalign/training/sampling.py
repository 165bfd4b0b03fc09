"""Which examples each step trains on: a pure function of (seed, stream, step), so resuming needs only the step.

Every stream is read in epochs; epoch ``e`` visits the dataset in a permutation drawn from
``(seed, stream, e)``. Step ``s`` takes the ``batch_size`` positions ``s·B … (s+1)·B − 1`` of the concatenated
epochs (a batch may span two epochs). That global batch is split into ``accumulation`` micro-batches, and each
micro-batch into ``world`` equal slices, one per process — so the examples of a step, and their order, are the
same whether one process runs them or several.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def stream_seed(seed: int, stream: str, epoch: int) -> int:
    """A 63-bit seed for ``stream``'s permutation in ``epoch`` (stable across Python runs and machines)."""
    return (int(seed) * 1_000_003 + zlib.crc32(stream.encode()) * 7919 + int(epoch)) % (2**63 - 1)


def epoch_permutation(n: int, seed: int, stream: str, epoch: int) -> torch.Tensor:
    """The order in which ``stream`` visits its ``n`` examples in ``epoch``."""
    generator = torch.Generator().manual_seed(stream_seed(seed, stream, epoch))
    return torch.randperm(n, generator=generator)


def batch_indices(n: int, batch_size: int, step: int, seed: int, stream: str) -> torch.Tensor:
    """Dataset indices of the global batch of ``step`` (``batch_size`` of them, in order)."""
    if n < 1:
        raise ValueError(f"stream {stream!r} is empty")
    start, stop = step * batch_size, (step + 1) * batch_size
    parts, epoch = [], start // n
    while epoch * n < stop:
        order = epoch_permutation(n, seed, stream, epoch)
        lo, hi = max(start - epoch * n, 0), min(stop - epoch * n, n)
        parts.append(order[lo:hi])
        epoch += 1
    return torch.cat(parts)


def process_slice(indices: torch.Tensor, accumulation: int, micro: int, world: int, rank: int) -> torch.Tensor:
    """This process's share of micro-batch ``micro`` of a global batch."""
    micro_size = len(indices) // accumulation
    chunk = indices[micro * micro_size:(micro + 1) * micro_size]
    share = len(chunk) // world
    return chunk[rank * share:(rank + 1) * share]


class StepBatchSampler(Sampler[list[int]]):
    """Yields this process's index lists for steps ``start_step … total_steps − 1`` (``accumulation`` lists a
    step), for use as a DataLoader's ``batch_sampler``."""

    def __init__(self, n: int, batch_size: int, seed: int, stream: str, start_step: int, total_steps: int,
                 accumulation: int = 1, world: int = 1, rank: int = 0) -> None:
        if batch_size % (accumulation * world):
            raise ValueError(f"stream {stream!r}: batch size {batch_size} is not divisible by accumulation × "
                             f"processes = {accumulation} × {world}")
        self.n, self.batch_size, self.seed, self.stream = n, batch_size, seed, stream
        self.start_step, self.total_steps = start_step, total_steps
        self.accumulation, self.world, self.rank = accumulation, world, rank

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.total_steps):
            indices = batch_indices(self.n, self.batch_size, step, self.seed, self.stream)
            for micro in range(self.accumulation):
                yield process_slice(indices, self.accumulation, micro, self.world, self.rank).tolist()

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.accumulation


def item_seeds(seed: int, step: int, index: torch.Tensor, salt: int = 0) -> list[int]:
    """One seed per item for randomness drawn at ``step`` (attack starts): a function of (seed, step, item index,
    salt) only, so an item draws the same whichever batch or process it lands in."""
    base = (int(seed) * 1_000_003 + int(step) * 7919 + int(salt) * 104_729) % (2**62)
    return [(base + int(i) * 2_654_435_761) % (2**63 - 1) for i in index.tolist()]
