"""``vlalign train`` for TeCoA and FARE: fine-tune through the one loop, evaluate clean and robust accuracy on
fresh images, save the model."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from vlalign.attacks.registry import is_bounded, split_attack_names
from vlalign.attacks.threat_model import format_eps, parse_eps
from vlalign.config import NumberText, check_range, config_to_dict, option
from vlalign.data.datasets import ImageFolderDataset, MiniWorldDataset
from vlalign.data.mini_world import MiniWorld, parse_split
from vlalign.evaluation.robust import robust_evaluate
from vlalign.io import atomic_write_json
from vlalign.reporting.run_report import run_info, write_report
from vlalign.reporting.training import training_report
from vlalign.models.base import ContrastiveModel
from vlalign.models.loading import load_model, save_model
from vlalign.pipelines.runs import RunOutcome, outcome_without_evaluation, train_summary, write_alternates
from vlalign.training.loop import FitResult, fit
from vlalign.training.methods.robust import RobustConfig, RobustFinetune
from vlalign.training.train_config import TrainConfig


@dataclass
class RobustData:
    """Training images: a mini-world split rendered from ``seed``, or an image folder."""

    path: str | None = option(None, "an image folder (labels needed for TeCoA); null: the mini world")
    split: str = option("clean", "mini-world split of the training images")
    images: int = option(10000, "mini world: number of training images")
    seed: int = option(10000, "mini world: seed of the training images (kept apart from every evaluation seed)")
    on_error: Literal["fail", "skip"] = option("fail", "an image that cannot be decoded stops the run or is skipped")

    def __post_init__(self) -> None:
        parse_split(self.split)
        check_range("images", self.images, 1)


@dataclass
class RobustEval:
    """Clean and robust accuracy after training, on fresh mini-world images."""

    images: int = option(256, "fresh clean test images")
    seed: int = option(4242, "their seed (must differ from data.seed)")
    eps: list[NumberText] = option(help="ℓ∞ radii to evaluate", factory=lambda: ["2/255", "4/255"])
    attacks: list[str] = option(help="attacks whose per-sample worst case is reported",
                                factory=lambda: ["apgd-ce", "pgd"])
    steps: int = option(20, "iterations of each evaluation attack")

    def __post_init__(self) -> None:
        check_range("images", self.images, 1)
        check_range("steps", self.steps, 1)
        for e in self.eps:
            parse_eps(e)
        bounded = [name for name in split_attack_names(self.attacks) if is_bounded(name)]
        if bounded and not self.eps:
            raise ValueError(f"eps must list at least one radius for the bounded attacks {bounded}, e.g. ['4/255']")


def _robust_train() -> TrainConfig:
    return TrainConfig(steps=150, batch_size=64, checkpoint_every=50)


@dataclass
class RobustRun:
    """A ``vlalign train`` config for TeCoA or FARE."""

    method: Literal["tecoa", "fare"] = option("tecoa", "tecoa or fare")
    model: str = option("mini", "model spec: mini, a MiniCLIP or transformers CLIP folder, or a hub id")
    options: RobustConfig = option(help="objective and training attack", factory=RobustConfig)
    train: TrainConfig = option(help="loop settings (method defaults: AdamW, lr 3e-4, betas (0.9, 0.98), weight "
                                     "decay 1e-4)", factory=_robust_train)
    data: RobustData = option(help="training images", factory=RobustData)
    eval: RobustEval = option(help="evaluation after training", factory=RobustEval)

    def __post_init__(self) -> None:
        if self.options.method != self.method:
            if self.options.method != RobustConfig.method:  # set explicitly to something else
                raise ValueError(f"options.method is {self.options.method!r} but method is {self.method!r}; "
                                 "set only the top-level method")
            self.options = replace(self.options, method=self.method)
        if self.data.path is None and self.data.seed == self.eval.seed:
            raise ValueError(f"eval.seed must differ from data.seed ({self.data.seed}): evaluate on fresh images")
        if self.data.path is None and self.train.batch_size > self.data.images:
            raise ValueError(f"train.batch_size {self.train.batch_size} exceeds data.images {self.data.images}")


def robust_finetune(run: RobustRun, out: Path | None, progress: bool = True, overwrite: bool = False) -> FitResult:
    """Fine-tune per ``run`` through :func:`fit` (resuming from ``out/state`` if present)."""
    model = load_model(run.model, run.train.device)
    if run.data.path is None:
        data = MiniWorldDataset(run.data.split, run.data.images, run.data.seed, cache=True)
        classnames = MiniWorld.classnames
    else:
        data = ImageFolderDataset(run.data.path, model.image_size, run.data.on_error)
        classnames = data.classnames
    method = RobustFinetune(model, data, classnames, run.options)
    identity = {k: v for k, v in config_to_dict(run).items() if k not in ("train", "options", "eval")}
    return fit(method, run.train, out, run_config=identity, progress=progress, overwrite=overwrite)


def train_robust_run(run: RobustRun, out: Path, progress: bool = True, overwrite: bool = False) -> RunOutcome:
    """Fine-tune, evaluate clean and robust accuracy on fresh images, write the model folder and metrics."""
    began = time.perf_counter()
    out = Path(out)
    result = robust_finetune(run, out, progress, overwrite)
    skipped = outcome_without_evaluation(result, out, config_to_dict(run))
    if skipped is not None:
        return skipped
    eval_images = MiniWorld().sample("clean", run.eval.images, run.eval.seed)

    def evaluate(model: ContrastiveModel) -> dict:
        evaluation = robust_evaluate(model, eval_images, run.eval.attacks, [parse_eps(e) for e in run.eval.eps],
                                     steps=run.eval.steps, seed=run.eval.seed, templates=run.options.templates,
                                     progress=progress)
        summary = evaluation.metrics()
        return {"method": run.method, "eps": format_eps(run.options.epsilon), "clean": summary["clean"],
                "worst_case": summary["worst_case"], "robust": summary["robust"], "warnings": summary["warnings"]}

    def save(model: ContrastiveModel, folder: Path) -> None:
        save_model(model, folder, info={"method": run.method, "base_model": run.model})

    metrics = evaluate(result.model)
    metrics["train"] = train_summary(result, run.train.steps, out)
    save(result.model, out)
    if result.alternates:
        metrics["alternates"] = write_alternates(result.alternates, out, save, evaluate)
    # metrics.json first: if the run stops between the two writes, train_config.json still holds the earlier eval
    # settings, so the next run evaluates again instead of reporting stale metrics.
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "train_config.json", config_to_dict(run))
    write_report(out, "train", training_report(out), run_info(seconds=time.perf_counter() - began))
    return RunOutcome(out, metrics=metrics, start_step=result.start_step, reevaluated=result.already_finished)

