"""Per-step metrics to CSV (and TensorBoard when it is installed)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from vlalign.io import atomic_write_bytes


class MetricsLogger:
    """Appends one CSV row per logged step to ``folder/metrics.csv``; columns fixed by the first row.

    With ``resume``, the rows of the interrupted run are kept up to the first step logged again: rows it wrote
    after its last checkpoint are replaced by the resumed run's, not duplicated.
    """

    def __init__(self, folder: str | Path, resume: bool = False) -> None:
        self.path = Path(folder) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fields: list[str] | None = None
        self._trim_on_first_log = resume and self.path.is_file()
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
        if self._trim_on_first_log:
            self._trim_on_first_log = False
            self._drop_rows_from(step)
        if self._fields is None:
            self._fields = list(row)
            with self.path.open("w", newline="") as handle:
                csv.DictWriter(handle, self._fields).writeheader()
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, self._fields, extrasaction="ignore").writerow(row)
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)

    def _drop_rows_from(self, step: int) -> None:
        with self.path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        kept = [r for r in rows if int(float(r["step"])) < step]
        if len(kept) == len(rows) or self._fields is None:
            return
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, self._fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_bytes(self.path, buffer.getvalue().encode())

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
