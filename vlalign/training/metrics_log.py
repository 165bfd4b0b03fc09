"""Per-step metrics to CSV (and TensorBoard when it is installed)."""

from __future__ import annotations

import csv
import math
from pathlib import Path


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def check_finite(loss: float, step: int, where: str) -> None:
    """Raise a clear error instead of training on from a NaN/inf loss."""
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"{where}: loss is {loss} at step {step}; the last checkpoint is kept. "
            "Lower the learning rate or beta, or check the inputs for NaNs."
        )


class MetricsLogger:
    """Appends one CSV row per logged step to ``folder/metrics.csv``; columns fixed by the first row."""

    def __init__(self, folder: str | Path, resume: bool = False) -> None:
        self.path = Path(folder) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fields: list[str] | None = None
        if resume and self.path.is_file():
            with self.path.open() as handle:
                header = handle.readline().strip()
            self._fields = header.split(",") if header else None
        else:
            self.path.unlink(missing_ok=True)
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(folder) / "tensorboard"))
        except ImportError:
            self._tb = None

    def log(self, step: int, **values: float) -> None:
        row = {"step": step, **values}
        if self._fields is None:
            self._fields = list(row)
            with self.path.open("w", newline="") as handle:
                csv.DictWriter(handle, self._fields).writeheader()
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, self._fields, extrasaction="ignore").writerow(row)
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
