"""What a ``vlalign train`` run reports back to the command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RunOutcome:
    """The run folder and, unless the run had already finished, the metrics of its evaluation."""

    out: Path
    metrics: dict = field(default_factory=dict)
    already_finished: bool = False
    start_step: int = 0
