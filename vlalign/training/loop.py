"""The one training loop: :func:`fit` trains any :class:`~vlalign.training.method.Method`.

It alone does, in this order each step: draw the batches of every stream (seeded, resumable mid-epoch, sharded
across processes), the method's forward (under bf16 autocast when asked), the finite check of every loss term
*before* backward, backward (gradient sync across processes only on the last accumulation micro-step), optional
gradient clipping, the optimizer and scheduler steps, weight averaging (BMA, EMA), metrics (``metrics.csv``;
TensorBoard when installed), atomic checkpoints every ``checkpoint_every`` steps and at the end, and a progress
bar. A run resumes from its last checkpoint only with the config it was started with, and a finished run is not
trained again. Under ``accelerate launch`` it runs data-parallel (DDP over gloo on CPUs, NCCL on GPUs); only the
main process writes files.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate
from tqdm.auto import tqdm

from vlalign.config import ConfigError
from vlalign.io import atomic_write_json
from vlalign.models.checkpoint import CheckpointError
from vlalign.training import distributed
from vlalign.training.averaging import WeightAverager
from vlalign.training.method import Method
from vlalign.training.metrics_log import MetricsLogger
from vlalign.training.run_identity import RESOLVED_FILE, resolved_settings, run_identity, same_run
from vlalign.training.sampling import StepBatchSampler
from vlalign.training.schedule import warmup_cosine
from vlalign.training.state import (
    config_differences, load_training_state, read_state_meta, save_training_state,
)
from vlalign.training.train_config import TrainConfig


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; training stopped before the backward pass."""


class ConfigMismatchError(ConfigError):
    """A run folder holds a state trained with another config."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says how to resume."""


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    #: ``method.finish()``: the trained model (with the chosen weight average).
    model: nn.Module
    #: One row per logged step: the mean of every loss term over the step's micro-batches and processes, and lr.
    history: list[dict[str, float]] = field(default_factory=list)
    #: The models of ``extra_averaging``, by kind.
    alternates: dict[str, nn.Module] = field(default_factory=dict)
    #: The step this call started at (0, or the checkpoint it resumed from).
    start_step: int = 0
    #: Whether the run had already finished, so this call trained nothing.
    already_finished: bool = False
    seconds: float = 0.0


def _optimizer(train: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """The configured optimizer over a method's groups; a group's ``lr_scale`` sets its rate to that multiple of
    ``train.lr`` (the schedule then scales every group alike)."""
    groups = [dict(g) for g in groups]
    half = [p for g in groups for p in g["params"] if p.requires_grad and p.dtype == torch.float16]
    if half and train.optimizer != "sgd":
        raise ConfigError(f"{len(half)} trainable parameter tensors are float16: train.optimizer {train.optimizer} "
                          "steps on float16 weights underflow (its eps is 0 in float16) and turn them into NaN; load "
                          "the model in float32 (the loaders' default), and use train.precision: bf16 for mixed "
                          "precision")
    for group in groups:
        if "lr_scale" in group:
            group["lr"] = train.lr * group.pop("lr_scale")
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr)
    cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "adamax": torch.optim.Adamax}[train.optimizer]
    return cls(groups, lr=train.lr, betas=train.betas)


def _scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    if train.schedule == "constant":
        warmup = max(1, round(train.steps * train.warmup_fraction)) if train.warmup_fraction > 0 else 0
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    return warmup_cosine(optimizer, train.steps, train.warmup_fraction)


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


class _Processes:
    """This process's place in a (possibly) data-parallel run; Accelerate sets up the process group."""

    def __init__(self, train: TrainConfig) -> None:
        requested = torch.device(train.device)
        if requested.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"train.device is {train.device!r} but this torch build has no CUDA device; "
                              "use device: cpu or install a CUDA build of torch")
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.accelerator = None
        if self.distributed:
            from accelerate import Accelerator

            self.accelerator = Accelerator(cpu=requested.type == "cpu")
            self.device = self.accelerator.device
        else:
            self.device = requested
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.is_main = self.rank == 0

    def wrap(self, method: Method) -> nn.Module:
        return self.accelerator.prepare_model(method, device_placement=False) if self.distributed else method

    def barrier(self) -> None:
        if self.distributed:
            self.accelerator.wait_for_everyone()


def _start(state_dir: Path | None, identity: dict, overwrite: bool, processes: _Processes) -> dict | None:
    """The metadata of the state to resume from (None: start afresh); refuses a state of another config."""
    if state_dir is None:
        return None
    if overwrite:
        if processes.is_main and state_dir.exists():
            shutil.rmtree(state_dir)
            (state_dir.parent / "metrics.csv").unlink(missing_ok=True)
        processes.barrier()
        return None
    meta = read_state_meta(state_dir)
    if meta is not None and not same_run(meta, identity):
        differences = config_differences(meta.get("config", {}), identity)
        raise ConfigMismatchError(
            f"{state_dir.parent}: holds a run trained with another config ({'; '.join(differences[:8])}"
            f"{'; …' if len(differences) > 8 else ''}); use another --out, or --overwrite to start over")
    return meta


def fit(method: Method, config: TrainConfig, out: str | Path | None = None, run_config: dict[str, Any] | None = None,
        progress: bool = True, overwrite: bool = False) -> FitResult:
    """Train ``method`` for ``config.steps`` optimizer steps and return its finished model.

    With ``out``, a resumable state goes to ``out/state`` every ``checkpoint_every`` steps and at the end, and
    metrics to ``out/metrics.csv``; calling again with the same ``out`` and config resumes (bit-identically) or,
    if the run finished, returns its model without training. ``run_config`` (what else identifies the run: data,
    evaluation) is stored with the state and compared on resume.
    """
    began = time.perf_counter()
    train = config.resolved(method.default_train)
    processes = _Processes(train)
    device = processes.device
    identity = run_identity(method, train, run_config)
    _check_streams(method, train)  # before any work: a bad batch size fails at once
    state_dir = Path(out) / "state" if out is not None else None
    meta = _start(state_dir, identity, overwrite, processes)
    if out is not None and processes.is_main:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out) / RESOLVED_FILE, resolved_settings(method, train))

    torch.manual_seed(train.seed)
    method.prepare(device)
    module = method.trainable_module()
    optimizer = _optimizer(train, method.param_groups(train.weight_decay))
    scheduler = _scheduler(optimizer, train)
    kinds = list(dict.fromkeys(k for k in [train.averaging, *train.extra_averaging] if k != "none"))
    averagers = {k: WeightAverager(method.averaged_weights(), k, train.steps, train.bma_gamma, train.ema_decay)
                 for k in kinds}
    start = 0
    # Drawn before the RNG is restored: a resumed run then continues the global stream exactly where it stopped.
    generators = _loader_generators(method)
    if meta is not None:
        meta = load_training_state(state_dir, module, optimizer, scheduler, averagers)
        start = int(meta["step"])
        if processes.is_main and progress:
            print(f"run in {state_dir.parent} already finished at step {start}; not training it again"
                  if meta["finished"] else f"resuming from step {start} of {train.steps}", flush=True)
    history: list[dict[str, float]] = []
    if meta is None or not meta["finished"]:
        history = _train(method, train, processes, optimizer, scheduler, averagers, start, state_dir, identity,
                         progress, generators, dict(meta.get("skipped", {})) if meta is not None else {})
    result = _finish(method, train, averagers)
    result.history, result.start_step = history, start
    result.already_finished = meta is not None and bool(meta["finished"])
    result.seconds = time.perf_counter() - began
    return result


def _check_streams(method: Method, train: TrainConfig) -> None:
    for name, stream in method.streams().items():
        batch_size, n = stream.batch_size or train.batch_size, len(stream.dataset)
        if batch_size > n:
            raise ConfigError(f"train.batch_size {batch_size} exceeds the {n} examples of stream '{name}'")


def _loader_generators(method: Method) -> dict[str, torch.Generator]:
    """One private generator per stream for its DataLoader's base seed, holding the global torch RNG state at this
    point; the global RNG advances by the one draw each DataLoader iterator used to take from it.

    A DataLoader without a generator draws its base seed from the global RNG when its iterator is created, which
    on resume would happen after the RNG was restored and shift every later draw (dropout, a custom method's
    ``torch.rand``). Drawing here, before the restore, keeps both the base seeds and the global stream of an
    uninterrupted run exactly as they were, and makes a resumed run continue that stream bit-identically.
    """
    generators = {}
    for name in method.streams():
        generators[name] = torch.Generator()
        generators[name].set_state(torch.get_rng_state())
        torch.empty((), dtype=torch.int64).random_()  # the draw the iterator would have taken
    return generators


def _loaders(method: Method, train: TrainConfig, processes: _Processes, start: int,
             generators: dict[str, torch.Generator] | None = None) -> dict[str, DataLoader]:
    loaders = {}
    for name, stream in method.streams().items():
        batch_size = stream.batch_size or train.batch_size
        n = len(stream.dataset)
        sampler = StepBatchSampler(n, batch_size, train.seed, name, start, train.steps, train.accumulation,
                                   processes.world, processes.rank)
        loaders[name] = DataLoader(stream.dataset, batch_sampler=sampler, collate_fn=stream.collate or default_collate,
                                   num_workers=train.num_workers, persistent_workers=False,
                                   pin_memory=processes.device.type == "cuda",
                                   generator=(generators or {}).get(name))
    return loaders


def _train(method: Method, train: TrainConfig, processes: _Processes, optimizer: torch.optim.Optimizer,
           scheduler: Any, averagers: dict[str, WeightAverager], start: int, state_dir: Path | None,
           identity: dict, progress: bool, generators: dict[str, torch.Generator] | None = None,
           skipped: dict[str, int] | None = None) -> list[dict[str, float]]:
    device = processes.device
    module = method.trainable_module()
    params = [p for p in module.parameters() if p.requires_grad]
    wrapped = processes.wrap(method)
    iterators = {name: iter(loader) for name, loader in _loaders(method, train, processes, start, generators).items()}
    logger = MetricsLogger(state_dir.parent, resume=start > 0) if state_dir is not None and processes.is_main else None
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if train.precision == "bf16"
                else contextlib.nullcontext())
    last_saved = start
    history: list[dict[str, float]] = []
    # Per stream, since the run started: a resume starts from the run's totals kept in the state, counted once (on
    # the main process) so that the sum over processes logged below stays the run's total.
    skipped = {name: int(n) if processes.is_main else 0 for name, n in (skipped or {}).items()}
    method.train()
    bar = tqdm(range(start, train.steps), desc=method.label, initial=start, total=train.steps,
               disable=not (progress and processes.is_main))
    step = start
    try:
        for step in bar:
            optimizer.zero_grad(set_to_none=True)
            sums: dict[str, torch.Tensor] = {}
            for micro in range(train.accumulation):
                batch: dict[str, Any] = {name: _to_device(next(it), device) for name, it in iterators.items()}
                for name in iterators:
                    if "skipped" in batch[name]:  # undecodable images dropped by the collate function
                        skipped[name] = skipped.get(name, 0) + int(batch[name].pop("skipped"))
                batch["step"], batch["seed"] = step, train.seed
                sync = micro == train.accumulation - 1 or not processes.distributed
                with contextlib.nullcontext() if sync else wrapped.no_sync():
                    with autocast:
                        terms = wrapped(batch)
                    _check_terms(terms, step, last_saved, state_dir)
                    (terms["loss"] / train.accumulation).backward()
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + value.detach().double() / train.accumulation
            if train.grad_clip is not None:
                sums["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, train.grad_clip).detach().double()
            # The rate this step trained with, read before the scheduler moves it on to the next step's.
            step_lr = float(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
            if averagers:
                current = method.averaged_weights()
                for averager in averagers.values():
                    averager.update(current)
            if step % train.log_every == 0 or step == train.steps - 1:
                sums.update({f"skipped_{name}": torch.tensor(float(n), device=device) for name, n in skipped.items()})
                row = _log_row(sums, step, step_lr)
                history.append(row)
                if logger is not None:
                    logger.log(**row)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
            done = step + 1 == train.steps
            if state_dir is not None and ((step + 1) % train.checkpoint_every == 0 or done):
                totals = _skipped_totals(skipped, device)  # a collective: every process calls it
                if processes.is_main:
                    save_training_state(state_dir, module, optimizer, scheduler, step + 1, identity, finished=done,
                                        averagers=averagers, extra={"skipped": totals})
                last_saved = step + 1
                processes.barrier()
    except KeyboardInterrupt:
        if state_dir is not None:
            # A Ctrl-C can land after a checkpoint was written but before last_saved was updated.
            with contextlib.suppress(CheckpointError, OSError, ValueError, KeyError, TypeError):
                meta = read_state_meta(state_dir)
                last_saved = max(last_saved, int(meta["step"])) if meta is not None else last_saved
        where = (f"the last checkpoint (step {last_saved}) in {state_dir} is kept: re-run the same command to "
                 "resume" if state_dir is not None and last_saved > 0 else "nothing was saved")
        raise RunInterrupted(f"interrupted at step {step}; {where}") from None
    finally:
        if logger is not None:
            logger.close()
    method.eval()
    return history


def _check_terms(terms: dict[str, torch.Tensor], step: int, last_saved: int, state_dir: Path | None) -> None:
    if "loss" not in terms:
        raise KeyError(f"the method's forward returned {sorted(terms)}, which has no 'loss'")
    values = torch.stack([t.detach().float().reshape(()) for t in terms.values()])
    if not distributed.all_finite(values):
        shown = ", ".join(f"{k}={float(v):.6g}" for k, v in zip(terms, values))
        kept = (f"the last checkpoint (step {last_saved}) in {state_dir} is kept" if state_dir is not None
                and last_saved > 0 else "no checkpoint was written")
        raise NonFiniteLossError(f"non-finite loss at step {step} ({shown}); stopped before the backward pass, "
                                 f"{kept}. Lower the learning rate or beta, or check the inputs for NaNs.")


def _skipped_totals(skipped: dict[str, int], device: torch.device) -> dict[str, int]:
    """The run's skipped images per stream, summed over processes (every process has the same streams)."""
    if distributed.world_size() == 1 or not skipped:
        return dict(skipped)
    names = sorted(skipped)
    values = torch.tensor([float(skipped[n]) for n in names], dtype=torch.float64, device=device)
    summed = distributed.gather(values[None].to(distributed_device(values))).sum(0)
    return {n: int(v) for n, v in zip(names, summed.tolist())}


def _log_row(sums: dict[str, torch.Tensor], step: int, lr: float) -> dict[str, float]:
    """A metrics row: the step, every term (averaged over processes; skipped counts summed) and the learning rate
    ``lr`` the step's update used (the first parameter group's)."""
    names = list(sums)
    values = torch.stack([sums[n].reshape(()).double() for n in names])
    if distributed.world_size() > 1:
        per_process = distributed.gather(values[None].to(distributed_device(values)))
        totals = torch.tensor([n.startswith("skipped_") for n in names], device=per_process.device)
        values = torch.where(totals, per_process.sum(0), per_process.mean(0))  # counts add up, losses average
    return {"step": step, **{n: float(v) for n, v in zip(names, values)}, "lr": lr}


def distributed_device(tensor: torch.Tensor) -> torch.device:
    """Where a tensor must be for a collective: the GPU under NCCL, anywhere under gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else tensor.device


def _finish(method: Method, train: TrainConfig, averagers: dict[str, WeightAverager]) -> FitResult:
    """The finished model with the chosen average, and the models of the extra averages (each built from a copy
    of the method, so the method itself keeps its last weights until its own average is loaded)."""
    alternates = {}
    for kind in train.extra_averaging:
        if kind == train.averaging:
            continue
        replica = copy.deepcopy(method, _shared(method))
        if kind != "none":
            replica.load_averaged_weights(averagers[kind].average)
        alternates[kind] = replica.finish()
    if train.averaging != "none":
        method.load_averaged_weights(averagers[train.averaging].average)
    return FitResult(model=method.finish(), alternates=alternates)


def _shared(method: Method) -> dict[int, Any]:
    """A deepcopy memo under which a copy of ``method`` shares its datasets and frozen tensors with the original
    (only the models need copying to build an alternate)."""
    shared: list[Any] = [getattr(method, "frozen", None)]
    for stream in method.streams().values():
        shared += [stream.dataset, getattr(stream.dataset, "base", None)]
    shared += [value for value in vars(method).values() if isinstance(value, torch.utils.data.Dataset)]
    return {id(obj): obj for obj in shared if obj is not None}
