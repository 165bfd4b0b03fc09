"""vlalign.processes: the one way work is spread over spawned worker processes."""

from __future__ import annotations

import pytest
import torch

from vlalign.processes import run_in_workers, split_range, threads_per_worker

_STATE: dict = {}


def _install(offset: int) -> None:
    _STATE["offset"] = offset


def _job(key: tuple[str, int], scale: int) -> tuple[str, int, int]:
    name, value = key
    return name, scale * value + _STATE["offset"], torch.get_num_threads()


@pytest.mark.parametrize("start, n, parts", [(0, 10, 3), (5, 7, 2), (2, 30, 2), (0, 1, 4), (3, 0, 2)])
def test_split_range_covers_the_range_once_in_order(start, n, parts):
    chunks = split_range(start, n, parts)
    covered = [i for first, count in chunks for i in range(first, first + count)]
    assert covered == list(range(start, start + n))
    assert len(chunks) <= parts and all(count > 0 for _, count in chunks)
    assert len({count for _, count in chunks[:-1]}) <= 1


def test_split_range_and_workers_refuse_nonsense():
    with pytest.raises(ValueError, match="parts >= 1"):
        split_range(0, 5, 0)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        run_in_workers(_job, [("a", 1)], (2,), workers=0)


def test_two_workers_give_what_one_process_gives_and_run_the_initializer_in_each():
    keys = [(f"job{i}", i) for i in range(5)]
    here = run_in_workers(_job, keys, (3,), workers=1, progress=False, initializer=_install, initargs=(100,))
    spread = run_in_workers(_job, keys, (3,), workers=2, progress=False, initializer=_install, initargs=(100,))
    assert {k: v[:2] for k, v in here.items()} == {k: v[:2] for k, v in spread.items()}
    assert here[("job4", 4)][:2] == ("job4", 112)
    assert {v[2] for v in spread.values()} == {threads_per_worker(2)}
