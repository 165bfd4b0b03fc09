"""The settings of the one training loop, shared by every method (the ``train:`` section of a config)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from vlalign.config import check_range, option

#: Loop settings a method may leave to its own defaults (``None`` in the config means "the method's default").
METHOD_DEFAULTED = ("lr", "optimizer", "betas", "weight_decay")
#: Fallbacks when neither the config nor the method sets them.
GLOBAL_DEFAULTS: dict[str, Any] = {"lr": 1e-4, "optimizer": "adamw", "betas": (0.9, 0.999), "weight_decay": 0.0}
#: Fields that change how a run is executed but not what it computes: a run may resume with other values.
RUN_ONLY_FIELDS = ("device", "num_workers", "checkpoint_every", "log_every")


@dataclass
class TrainConfig:
    """How the loop trains: steps, batches, optimizer, schedule, precision, averaging, checkpoints."""

    steps: int = option(300, "optimizer steps")
    batch_size: int = option(64, "examples per optimizer step in each stream (global: split across processes and "
                                 "accumulation micro-steps)")
    accumulation: int = option(1, "micro-steps whose gradients are summed before each optimizer step")
    lr: float | None = option(None, "peak learning rate (null: the method's default)")
    optimizer: Literal["adamw", "adamax", "adam", "sgd"] | None = option(None, "optimizer (null: the method's default)")
    betas: tuple[float, float] | None = option(None, "Adam-family betas (null: the method's default)")
    weight_decay: float | None = option(None, "decoupled weight decay on weight matrices (null: the method's default)")
    warmup_fraction: float = option(0.1, "fraction of the steps with a linear learning-rate warm-up")
    schedule: Literal["cosine", "constant"] = option("cosine", "learning rate after warm-up: cosine decay to 0 or "
                                                                "constant")
    grad_clip: float | None = option(None, "clip the global gradient norm to this value (null: no clipping)")
    precision: Literal["fp32", "bf16"] = option("fp32", "bf16 autocasts the forward on GPU; losses stay float32")
    averaging: Literal["none", "bma", "ema"] = option("none", "weight average written into the final model: Beta "
                                                             "Moving Average (contrastive-PO App. E) or EMA")
    extra_averaging: list[Literal["none", "bma", "ema"]] = option(
        help="further averages kept in the same run and returned beside the model (BMA vs EMA); `vlalign train` "
             "saves each in OUT/<kind>/ and evaluates it into metrics.json's `alternates`", factory=list)
    bma_gamma: float = option(0.7, "γ of the Beta(γ, γ) weights of BMA")
    ema_decay: float = option(0.99, "decay of EMA")
    seed: int = option(0, "seed of batch order, initial weights and attack starts")
    checkpoint_every: int = option(100, "save a resumable state every N steps (and at the end)")
    log_every: int = option(10, "write a metrics.csv row every N steps")
    num_workers: int = option(0, "DataLoader worker processes per stream")
    device: str = option("cpu", "torch device, e.g. cpu, cuda, cuda:1")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "accumulation", "checkpoint_every", "log_every"):
            check_range(name, getattr(self, name), 1)
        check_range("num_workers", self.num_workers, 0)
        if self.lr is not None:
            check_range("lr", self.lr, 0, low_open=True)
        if self.weight_decay is not None:
            check_range("weight_decay", self.weight_decay, 0)
        if self.betas is not None:
            for i, beta in enumerate(self.betas):
                check_range(f"betas[{i}]", beta, 0, 1, high_open=True)
        check_range("warmup_fraction", self.warmup_fraction, 0, 1, high_open=True)
        if self.grad_clip is not None:
            check_range("grad_clip", self.grad_clip, 0, low_open=True)
        check_range("bma_gamma", self.bma_gamma, 0, low_open=True)
        check_range("ema_decay", self.ema_decay, 0, 1, high_open=True)
        if self.batch_size % self.accumulation:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by accumulation {self.accumulation}")

    def resolved(self, method_defaults: dict[str, Any]) -> "TrainConfig":
        """A copy whose method-defaulted fields (``lr``, ``optimizer``, ``betas``, ``weight_decay``) are filled in:
        the config's value, else the method's default, else the global one. The original stays as written, so
        changing the method of a copy picks up the new method's defaults."""
        unknown = sorted(set(method_defaults) - set(METHOD_DEFAULTED))
        if unknown:
            raise ValueError(f"method defaults for unknown loop settings {unknown}; allowed: {list(METHOD_DEFAULTED)}")
        values = {name: getattr(self, name) if getattr(self, name) is not None
                  else method_defaults.get(name, GLOBAL_DEFAULTS[name]) for name in METHOD_DEFAULTED}
        values["betas"] = tuple(values["betas"])
        return dataclasses.replace(self, **values)
