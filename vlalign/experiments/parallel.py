"""Independent pieces of an experiment (rows) spread over worker processes, one torch thread each, so that a 2-core
machine runs two at once. Workers are spawned (a fresh interpreter: no forked torch state), so the function must be
importable at module level and its arguments picklable."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import torch
from tqdm.auto import tqdm


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_in_workers(function: Callable[..., Any], keys: Sequence[str], args: tuple, workers: int,
                   desc: str = "rows", progress: bool = True) -> dict[str, Any]:
    """``{key: function(key, *args)}``, computed in ``workers`` spawned processes with one torch thread each, the
    keys submitted in the given order (put the longest first so that the workers finish together)."""
    results: dict[str, Any] = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                             initargs=(1,)) as pool:
        futures = {pool.submit(function, key, *args): key for key in keys}
        for future in tqdm(as_completed(futures), total=len(futures), desc=f"{desc} ({workers} workers)",
                           disable=not progress):
            results[futures[future]] = future.result()
    return results
