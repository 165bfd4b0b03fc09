"""What every benchmark shares: interleaved timing, peak memory, and the row a table and a JSON file are made of.

On a shared machine a neighbour's job slows whichever variant happens to run at that moment. Variants are
therefore timed round-robin (A B C A B C …, ``repeats`` rounds); each round gives one ratio to the baseline, and a
row reports the median of those ratios and their spread (min–max), never a ratio of two separate runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class Settings:
    """What the runner passes to every benchmark."""

    quick: bool = False
    device: str = "cpu"
    threads: int = 1
    repeats: int = 5
    #: GPU rows only: which set-ups to measure (names in ``bench_gpu.SETUPS``; None: all) and the peak FLOP/s for
    #: MFU (None: looked up by the GPU's name).
    gpu_setups: tuple[str, ...] | None = None
    peak_flops: float | None = None

    def pick(self, full: Any, quick: Any) -> Any:
        """``quick`` in ``--quick`` runs (the CI smoke test), else ``full``."""
        return quick if self.quick else full


@dataclass
class Row:
    """One line of a ratio table: ``variant`` against ``baseline`` on one setting.

    ``ratio`` is ``variant / baseline`` of ``unit`` (time: lower is better for the variant; throughput: higher);
    ``spread`` the min and max of the per-round ratios; ``target`` a human-readable goal and ``met`` whether the
    median ratio reaches it (None: no target). ``peak_mib`` is each side's peak memory (CPU: resident set size of
    the process), ``growth_mib`` how far it rose during that side's own calls. ``extra`` holds anything else worth
    keeping (agreement checks, accuracies, FLOPs).
    """

    benchmark: str
    compared: str
    variant: str
    baseline: str
    model: str
    batch: int | str
    threads: int | str
    device: str
    unit: str
    variant_value: float | None
    baseline_value: float | None
    ratio: float | None
    spread: tuple[float, float] | None = None
    rounds: int = 0
    target: str = ""
    met: bool | None = None
    peak_mib: dict[str, float] = field(default_factory=dict)
    growth_mib: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    skipped: str = ""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["spread"] = list(self.spread) if self.spread is not None else None
        return out


def skipped_row(benchmark: str, compared: str, reason: str, settings: Settings) -> Row:
    """A row that could not run (a missing optional package, no GPU) and says why."""
    return Row(benchmark, compared, "-", "-", "-", "-", settings.threads, settings.device, "-", None, None, None,
               skipped=reason)


def sync(device: str | torch.device) -> None:
    """Wait for queued GPU work (timings must include it); nothing on a CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """Peak memory while the ``with`` block runs, in MiB.

    On a GPU: ``torch.cuda.max_memory_allocated`` (exact, reset on entry). On a CPU: the process's resident set
    size, sampled every ``interval`` seconds by a thread (torch releases the GIL inside its kernels), so short
    spikes between samples can be missed and memory the allocator kept from earlier work counts as in use.
    """

    def __init__(self, device: str | torch.device = "cpu", interval: float = 0.002) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.peak = 0.0
        self.start = 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mib())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self.peak = self.start = _rss_mib()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_mib())

    @property
    def growth(self) -> float:
        """How far the peak rose above the level at entry (MiB): what the block itself needed."""
        return self.peak - self.start


@dataclass
class Timing:
    """Per-variant seconds per call of every round, the per-round ratios to the baseline, and memory: the peak
    (MiB) over the variant's calls and the largest rise above the level at the start of its calls."""

    seconds: dict[str, list[float]]
    ratios: dict[str, list[float]]
    peak_mib: dict[str, float]
    growth_mib: dict[str, float]

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def ratio(self, name: str) -> float:
        return statistics.median(self.ratios[name])

    def spread(self, name: str) -> tuple[float, float]:
        return min(self.ratios[name]), max(self.ratios[name])

    def memory(self, *names: str) -> tuple[dict[str, float], dict[str, float]]:
        """(peak, growth) in MiB of the named variants, for a :class:`Row`."""
        return {n: self.peak_mib[n] for n in names}, {n: self.growth_mib[n] for n in names}


def interleaved(variants: dict[str, Callable[[], Any]], baseline: str, repeats: int, calls: int = 1,
                device: str | torch.device = "cpu", warmup: int = 1) -> Timing:
    """Time each variant ``calls`` times per round, round-robin for ``repeats`` rounds, after ``warmup`` calls.

    Returns seconds per call for every round and the round's ratio ``variant / baseline``; the peak memory of
    each variant is taken over its own calls (CPU: resident set size, see :class:`PeakMemory`).
    """
    if baseline not in variants:
        raise ValueError(f"baseline {baseline!r} is not one of {list(variants)}")
    if repeats < 1 or calls < 1:
        raise ValueError(f"repeats and calls must be >= 1, got {repeats} and {calls}")
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    sync(device)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    peaks = {name: 0.0 for name in variants}
    growth = {name: 0.0 for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            with PeakMemory(device) as memory:
                start = time.perf_counter()
                for _ in range(calls):
                    fn()
                sync(device)
                seconds[name].append((time.perf_counter() - start) / calls)
            peaks[name] = max(peaks[name], memory.peak)
            growth[name] = max(growth[name], memory.growth)
    ratios = {name: [v / b for v, b in zip(seconds[name], seconds[baseline])] for name in variants}
    return Timing(seconds, ratios, peaks, growth)


def timing_from_rounds(rounds: list[dict[str, float]], baseline: str, peaks: dict[str, float],
                       growth: dict[str, float]) -> Timing:
    """A :class:`Timing` from rounds measured by the caller (each round: seconds per call of every variant)."""
    seconds = {name: [r[name] for r in rounds] for name in rounds[0]}
    ratios = {name: [r[name] / r[baseline] for r in rounds] for name in rounds[0]}
    return Timing(seconds, ratios, peaks, growth)


def time_row(benchmark: str, compared: str, timing: Timing, variant: str, baseline: str, *, model: str,
             batch: int | str, settings: Settings, per_call: str = "ms per step", target: float | None = None,
             target_text: str = "", extra: dict[str, Any] | None = None, device: str | None = None) -> Row:
    """A row comparing two timed variants: values in ms per call, ratio = variant time / baseline time.

    ``target`` is an upper bound on the ratio (e.g. 1.10 for "at most 10% slower"); ``target_text`` overrides
    how it is shown (e.g. "≥ 50× faster"). ``device`` is where the work ran (default: ``settings.device``; ``"cpu"``
    for a benchmark that always runs on the CPU).
    """
    ratio = timing.ratio(variant)
    return Row(benchmark, compared, variant, baseline, model, batch, settings.threads, device or settings.device,
               per_call,
               1000 * timing.median(variant), 1000 * timing.median(baseline), ratio, timing.spread(variant),
               len(timing.ratios[variant]), target_text or (f"≤ {target:.2f}×" if target is not None else ""),
               None if target is None else ratio <= target,
               *timing.memory(variant, baseline), extra or {})


def environment(settings: Settings) -> dict[str, Any]:
    """What the numbers depend on: versions (torchattacks: None when not installed), threads, device, ``--quick``
    and the rounds."""
    import platform

    import transformers

    info: dict[str, Any] = {
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "threads": settings.threads, "device": settings.device,
        "quick": settings.quick, "repeats": settings.repeats,
    }
    try:
        import torchattacks

        info["torchattacks"] = torchattacks.__version__
    except ImportError:
        info["torchattacks"] = None  # the pgd and apgd rows are skipped without it
    if torch.device(settings.device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def json_object_argument(parser: argparse.ArgumentParser, text: str, name: str,
                         example: str = '{"rank": 8}') -> dict[str, Any]:
    """``text`` parsed as a JSON object, or ``parser.error`` naming the argument ``name`` and what was expected
    (``example``: a valid value for this argument)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        parser.error(f"{name}: expected a JSON object such as '{example}', got {text!r} ({error.msg})")
    if not isinstance(value, dict):
        parser.error(f"{name}: expected a JSON object ({{...}}), got {text!r}")
    return value
