"""Independent pieces of work spread over worker processes, so that a 2-core machine runs two at once.

Workers are spawned (a fresh interpreter: a forked child of a process whose torch thread pool is running can
deadlock), so the function must be importable at module level and its arguments picklable. Each worker runs
``os.cpu_count() // workers`` torch threads (one on the 2-core machine with two workers): one process per core
beats two OpenMP threads per process on a shared machine by a wide margin.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import torch
from tqdm.auto import tqdm


def threads_per_worker(workers: int) -> int:
    """Torch threads for each of ``workers`` processes sharing this machine's cores (at least 1)."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _start_worker(threads: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    torch.set_num_threads(threads)
    if initializer is not None:
        initializer(*initargs)


def spawn_pool(workers: int, initializer: Callable[..., None] | None = None,
               initargs: tuple = ()) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes, each with :func:`threads_per_worker` torch threads, each running
    ``initializer(*initargs)`` once when it starts (e.g. to install state every task reads)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                               initargs=(threads_per_worker(workers), initializer, initargs))


def split_range(start: int, n: int, parts: int) -> list[tuple[int, int]]:
    """``(first index, count)`` of at most ``parts`` consecutive chunks covering ``start … start + n - 1``, all of
    equal size but the last."""
    if n < 0 or parts < 1:
        raise ValueError(f"need n >= 0 and parts >= 1, got n={n}, parts={parts}")
    chunk = max(1, -(-n // parts))
    return [(first, min(chunk, start + n - first)) for first in range(start, start + n, chunk)]


def run_in_workers(function: Callable[..., Any], keys: Sequence[Hashable], args: tuple = (), workers: int = 1,
                   desc: str = "jobs", progress: bool = True, initializer: Callable[..., None] | None = None,
                   initargs: tuple = ()) -> dict[Hashable, Any]:
    """``{key: function(key, *args)}``, the keys submitted in the given order (put the longest first so that the
    workers finish together). ``workers`` = 1 runs them here, one after another, after ``initializer(*initargs)``
    (the torch thread count is left alone); more spread them over :func:`spawn_pool`."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    results: dict[Hashable, Any] = {}
    if workers == 1:
        if initializer is not None:
            initializer(*initargs)
        for key in tqdm(keys, desc=desc, disable=not progress):
            results[key] = function(key, *args)
        return results
    with spawn_pool(workers, initializer, initargs) as pool:
        futures = {pool.submit(function, key, *args): key for key in keys}
        for future in tqdm(as_completed(futures), total=len(futures), desc=f"{desc} ({workers} workers)",
                           disable=not progress):
            results[futures[future]] = future.result()
    return results
