"""What a ``vlalign train`` run reports back to the command line, and the steps every run pipeline shares after
training: deciding whether a finished run needs evaluating again, and writing the extra weight averages."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from torch import nn

from vlalign.io import atomic_write_json
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
    #: The run had finished before, and was only evaluated again (its ``eval`` settings changed).
    reevaluated: bool = False


def as_json(value: Any) -> Any:
    """``value`` as it reads back from a JSON file (tuples become lists), to compare with a saved config."""
    return json.loads(json.dumps(value, default=str))


def read_json_object(path: Path) -> dict:
    """The JSON object in ``path``, or {} when it is missing, unreadable or not an object: a finished run's saved
    config or metrics, where anything unreadable just means "evaluate again"."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def outcome_without_evaluation(result: "FitResult", out: Path, config: dict[str, Any] | None = None
                               ) -> RunOutcome | None:
    """The outcome of a run whose evaluation this process skips, or None when it must evaluate and write.

    The ``eval`` section of a run config does not identify the run (it does not change training), so a run that
    had already finished is evaluated again, without training, when ``config["eval"]`` differs from the one in
    ``out/train_config.json`` or when an extra average (``train.extra_averaging``) has no metrics yet; otherwise
    it is only reported. A finished run whose saved model files (``*.safetensors`` in ``out`` or in an extra
    average's folder) cannot be read is written and evaluated again from its training state, which holds the
    final weights. Under ``accelerate launch`` only the main process evaluates and writes.
    """
    if result.already_finished and (out / "metrics.json").is_file() and _models_readable(out, result.alternates):
        saved = read_json_object(out / "train_config.json")
        metrics = read_json_object(out / "metrics.json")
        same_eval = config is None or saved.get("eval") == as_json(config.get("eval"))
        evaluated = set(result.alternates) <= set(metrics.get("alternates") or {})
        if same_eval and evaluated:
            return RunOutcome(out, already_finished=True)
    if distributed.rank() != 0:
        return RunOutcome(out, start_step=result.start_step)
    return None


def _models_readable(out: Path, alternates: dict[str, Any]) -> bool:
    """Whether every ``*.safetensors`` file of a finished run's model folders has a readable, complete header."""
    from safetensors import SafetensorError, safe_open

    for folder in [out, *(out / kind for kind in alternates)]:
        for path in folder.glob("*.safetensors"):
            try:
                with safe_open(str(path), "pt"):
                    pass
            except (SafetensorError, OSError):  # a truncated or garbled file
                return False
    return True


def write_alternates(alternates: dict[str, nn.Module], out: Path, save: Callable[[nn.Module, Path], None],
                     evaluate: Callable[[nn.Module], dict]) -> dict[str, dict]:
    """Save and evaluate the extra weight averages of a run (``train.extra_averaging``) as its main model is:
    each model into ``out/<kind>/`` with its ``metrics.json``; returns ``{kind: metrics}`` for the run's
    ``metrics.json["alternates"]``."""
    results = {}
    for kind, model in alternates.items():
        folder = out / kind
        metrics = evaluate(model)
        save(model, folder)
        atomic_write_json(folder / "metrics.json", {"averaging": kind, **metrics})
        results[kind] = metrics
    return results


def train_summary(result: "FitResult", steps: int, out: Path) -> dict:
    """The ``train`` entry of a run's metrics.json (final loss, steps, seconds); a finished run that is only
    evaluated again keeps the entry of its training."""
    if result.already_finished:
        previous = read_json_object(out / "metrics.json").get("train")
        if isinstance(previous, dict):
            return previous
    return {"final_loss": result.history[-1]["loss"] if result.history else None, "steps": steps,
            "train_seconds": result.seconds}
