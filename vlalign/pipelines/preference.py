"""``vlalign train`` for the preference methods (dpo, ipo, kto, cdpo, hinge, simpo, ce): data, training through
the one loop, the saved model and its evaluation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import time
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import Dataset

from vlalign.config import check_range, config_to_dict, option
from vlalign.data.datasets import ImageFolderDataset, PreferenceJsonlDataset, PreferenceView, TensorImageDataset
from vlalign.data.mini_world import INDOMAIN_CLASSES
from vlalign.data.preference import class_prompts, read_preference_rows, typographic_preference_data
from vlalign.evaluation.typographic import evaluate_typographic
from vlalign.io import atomic_write_json
from vlalign.reporting.run_report import run_info, write_report
from vlalign.reporting.training import training_report
from vlalign.models.base import ContrastiveModel
from vlalign.models.loading import load_model, save_model
from vlalign.pipelines.runs import RunOutcome, outcome_without_evaluation, write_alternates
from vlalign.training.loop import fit
from vlalign.training.methods.preference import ContrastivePreference, PreferenceConfig, PreferenceResult
from vlalign.training.train_config import TrainConfig


@dataclass
class PreferenceData:
    """Where the preference triplets and the regularization images come from."""

    path: str | None = option(None, "an image folder whose metadata has `written` (triplets: true class ≻ written "
                                     "class; its images also regularize) or a preference JSONL of {image, chosen, "
                                     "rejected}; null: typographic images of the mini world")
    regularization: str | None = option(None, "an image folder of clean images for the KL term when `path` is a JSONL")
    n_pref: int = option(2000, "mini world: typographic triplets of the 8 in-domain classes")
    n_reg: int = option(2000, "mini world: clean regularization images of the same classes")
    seed: int = option(100, "mini world: seed of the training images (evaluation uses other seeds)")
    on_error: Literal["fail", "skip"] = option("fail", "an image that cannot be decoded stops the run (fail) or is "
                                                        "skipped and counted (skip)")

    def __post_init__(self) -> None:
        check_range("n_pref", self.n_pref, 1)
        check_range("n_reg", self.n_reg, 0)
        if self.regularization is not None and not self.is_jsonl:
            raise ValueError("regularization is read only when path is a preference JSONL (an image folder's own "
                             "images regularize, and the mini world draws its own): remove it, or point path at a "
                             "JSONL")

    @property
    def is_jsonl(self) -> bool:
        """Whether ``path`` names a preference JSONL (any case of the suffix), not an image folder."""
        return self.path is not None and self.path.lower().endswith(".jsonl")


@dataclass
class TypographicEval:
    """The evaluation after training: Table 1's splits on fresh mini-world images."""

    images: int = option(600, "fresh images per split")
    seed: int = option(5000, "seed of the evaluation images")

    def __post_init__(self) -> None:
        check_range("images", self.images, 1)


def _train_defaults() -> TrainConfig:
    return TrainConfig(steps=300, batch_size=64, averaging="bma")


@dataclass
class PreferenceRun:
    """A ``vlalign train`` config for a preference method."""

    method: str = option("dpo", "the preference objective; its defaults fill `options` fields left null")
    model: str = option("mini", "model spec: mini, a model folder, or a hub id")
    options: PreferenceConfig = option(help="the objective and what it trains", factory=PreferenceConfig)
    train: TrainConfig = option(help="loop settings", factory=_train_defaults)
    data: PreferenceData = option(help="training data", factory=PreferenceData)
    eval: TypographicEval = option(help="evaluation after training", factory=TypographicEval)

    def __post_init__(self) -> None:
        if self.options.method != self.method:
            if self.options.method != PreferenceConfig.method:  # set explicitly to something else
                raise ValueError(f"options.method is {self.options.method!r} but method is {self.method!r}; "
                                 "set only the top-level method")
            self.options = dataclasses.replace(self.options, method=self.method)
        if self.data.is_jsonl and self.options.effective_lam > 0 and not self.data.regularization:
            raise ValueError(f"data.path is a preference JSONL and the KL weight lam = {self.options.effective_lam} > 0: "
                             "the regularizer needs clean images; set data.regularization to an image folder, or "
                             "options.lam: 0")
        if self.options.method == "ce" and self.data.is_jsonl and not self.data.regularization:
            raise ValueError("the ce baseline trains on labelled clean images: set data.regularization")
        if self.data.path is None and self.data.n_reg == 0:
            if self.options.method == "ce":
                raise ValueError("data.n_reg is 0 but the ce baseline trains on labelled clean images: set "
                                 "data.n_reg >= 1")
            if self.options.effective_lam > 0:
                raise ValueError(f"data.n_reg is 0 but the KL weight options.lam = {self.options.effective_lam} > 0: "
                                 "the regularizer needs clean images; set data.n_reg >= 1, or options.lam: 0")


def build_preference_data(run: PreferenceRun, model: ContrastiveModel
                          ) -> tuple[Dataset, tuple[str, ...], Dataset | None, tuple[str, ...] | None]:
    """``(pref, prompts, reg, reg_prompts)`` datasets for ``run.data``."""
    data = run.data
    if data.path is None:
        pref, reg = typographic_preference_data(data.n_pref, data.n_reg, data.seed, classes=INDOMAIN_CLASSES)
        reg_data = TensorImageDataset(reg.images, label=reg.labels) if len(reg) else None
        return (TensorImageDataset(pref.images, chosen=pref.chosen, rejected=pref.rejected), pref.prompts,
                reg_data, reg.prompts)
    if data.is_jsonl:
        rows, prompts = read_preference_rows(data.path)
        pref = PreferenceJsonlDataset(data.path, model.image_size, rows, prompts, data.on_error)
        if data.regularization is None:
            return pref, prompts, None, None
        clean = ImageFolderDataset(data.regularization, model.image_size, data.on_error)
        return pref, prompts, clean, class_prompts(clean.classnames)
    folder = ImageFolderDataset(data.path, model.image_size, data.on_error)
    prompts = class_prompts(folder.classnames)
    return PreferenceView(folder), prompts, folder, prompts


def train_preference_run(run: PreferenceRun, out: Path, progress: bool = True, overwrite: bool = False) -> RunOutcome:
    """Train, save the aligned model into ``out`` and evaluate it (a finished run is only reported)."""
    began = time.perf_counter()
    base = load_model(run.model, run.train.device)
    pref, prompts, reg, reg_prompts = build_preference_data(run, base)
    method = ContrastivePreference(base, pref, prompts, reg, run.options, reg_prompts)
    # `eval` does not identify the run: a finished run with new eval settings is evaluated again, not retrained.
    identity = {k: v for k, v in config_to_dict(run).items() if k not in ("train", "options", "eval")}
    result = fit(method, run.train, out, run_config=identity, progress=progress, overwrite=overwrite)
    skipped = outcome_without_evaluation(result, out, config_to_dict(run))
    if skipped is not None:
        return skipped

    def evaluate(model: ContrastiveModel) -> dict:
        return evaluate_typographic(model, base, run.eval.images, run.eval.seed)

    def save(model: ContrastiveModel, folder: Path) -> None:
        save_aligned_model(PreferenceResult(model, run.options), folder, run.model)

    save(result.model, out)
    metrics = evaluate(result.model)
    if result.alternates:
        metrics["alternates"] = write_alternates(result.alternates, out, save, evaluate)
    # metrics.json first: if the run stops between the two writes, train_config.json still holds the earlier eval
    # settings, so the next run evaluates again instead of reporting stale metrics.
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "train_config.json", config_to_dict(run))
    write_report(out, "train", training_report(out), run_info(seconds=time.perf_counter() - began))
    return RunOutcome(out, metrics=metrics, start_step=result.start_step, reevaluated=result.already_finished)


def save_aligned_model(result: PreferenceResult, out: str | Path, base_spec: str, **info: Any) -> None:
    """Write the aligned model into ``out`` (see :func:`vlalign.models.loading.save_model`)."""
    save_model(result.model, out, base_spec, {"method": result.config.method, "trainable": result.config.trainable,
                                              "base_model": base_spec, **info})
