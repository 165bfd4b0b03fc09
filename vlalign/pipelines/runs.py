"""What a ``vlalign train`` run reports back to the command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vlalign.training import distributed

if TYPE_CHECKING:
    from vlalign.training.loop import FitResult


@dataclass
class RunOutcome:
    """The run folder and, unless the run had already finished, the metrics of its evaluation."""

    out: Path
    metrics: dict = field(default_factory=dict)
    already_finished: bool = False
    start_step: int = 0


def outcome_without_evaluation(result: "FitResult", out: Path) -> RunOutcome | None:
    """The outcome of a run whose evaluation this process skips, or None when it must evaluate and write: a run
    that had already finished and wrote ``out/metrics.json`` is only reported, and under ``accelerate launch`` only
    the main process evaluates and writes."""
    if result.already_finished and (out / "metrics.json").is_file():
        return RunOutcome(out, already_finished=True)
    if distributed.rank() != 0:
        return RunOutcome(out, start_step=result.start_step)
    return None
