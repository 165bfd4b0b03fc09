"""``vlalign train`` for AdvLoRA and its comparison points (full fine-tuning, plain LoRA; clean or adversarial) on
image-text retrieval: the retrieval world, or a Karpathy-split JSON (COCO, Flickr30k) with its image root.
Evaluates Recall@1/5/10 in both directions and mR, clean and under ℓ∞ PGD, on a gallery the run never trained on;
saves the merged model as a plain model of its backend and, for the LoRA modes, the adapter in peft's format
(``peft/``)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vlalign.attacks.pgd import PGD
from vlalign.attacks.threat_model import parse_eps
from vlalign.config import ConfigError, NumberText, check_range, config_to_dict, option
from vlalign.data.karpathy import SPLITS, KarpathyDataset, load_karpathy_split
from vlalign.data.retrieval_set import RetrievalSet
from vlalign.data.retrieval_world import RetrievalWorld
from vlalign.evaluation.retrieval_eval import (DEFAULT_KS, evaluate_retrieval, has_itm_head, itm_reranked_recall,
                                                robust_retrieval)
from vlalign.io import atomic_write_json
from vlalign.models.adapters.advlora import trainable_parameter_count
from vlalign.models.base import ContrastiveModel
from vlalign.models.loading import load_model, save_model
from vlalign.pipelines.runs import RunOutcome, outcome_without_evaluation, train_summary, write_alternates
from vlalign.reporting.run_report import run_info, write_report
from vlalign.reporting.training import read_metrics_csv, training_report
from vlalign.training.loop import FitResult, fit
from vlalign.training.methods.advlora import AdvLoRAConfig, AdvLoRAMethod
from vlalign.training.train_config import TrainConfig


@dataclass
class RetrievalData:
    """Training images with five captions each: the retrieval world, or a split of a Karpathy-split JSON."""

    path: str | None = option(None, "a Karpathy-split JSON (e.g. dataset_coco.json); null: the retrieval world")
    image_root: str | None = option(None, "the folder the JSON's filepath/filename are relative to (with path)")
    split: str = option("train", "Karpathy split to train on (train also takes restval, as the standard split does)")
    images: int | None = option(4000, "retrieval world: training images; Karpathy: at most this many (null: all)")
    seed: int = option(7, "retrieval world: seed of the training images (pretraining used 0)")

    def __post_init__(self) -> None:
        if self.path is not None and self.image_root is None:
            raise ValueError("image_root is required with path: the folder the JSON's image paths are relative to")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {self.split!r}")
        if self.path is None and self.images is None:
            raise ValueError("images: the retrieval world needs a number of training images")
        if self.images is not None:
            check_range("images", self.images, 1)


@dataclass
class RetrievalEval:
    """Recall@k after training on a gallery the run never trained on, clean and under ℓ∞ PGD."""

    images: int = option(500, "gallery images (five captions each; 0: no evaluation)")
    split: str = option("test", "Karpathy: the split of the gallery (its first `images` images)")
    seed: int = option(2, "retrieval world: seed of the gallery (must differ from data.seed)")
    eps: list[NumberText] = option(help="ℓ∞ radii of the evaluation PGD (images attacked, captions clean)",
                            factory=lambda: ["2/255"])
    steps: int = option(10, "PGD iterations")
    attack_batch: int = option(100, "images attacked at once")
    itm_rerank: int = option(0, "a model with an image-text matching head (BLIP retrieval): also report clean "
                                "Recall@k after re-ranking each query's ITC top-k with ITM, as BLIP evaluates, at "
                                "this depth k (0: off; else at least 10)")

    def __post_init__(self) -> None:
        check_range("steps", self.steps, 1)
        check_range("attack_batch", self.attack_batch, 1)
        if self.itm_rerank != 0 and self.itm_rerank < max(DEFAULT_KS):
            raise ValueError(f"itm_rerank must be 0 or at least {max(DEFAULT_KS)} (the largest recall k), "
                             f"got {self.itm_rerank}")
        if self.images != 0 and self.images < max(DEFAULT_KS):
            raise ValueError(f"images must be 0 or at least {max(DEFAULT_KS)} (Recall@{max(DEFAULT_KS)} ranks that "
                             f"many images), got {self.images}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {self.split!r}")
        for e in self.eps:
            parse_eps(e)


def _advlora_train() -> TrainConfig:
    return TrainConfig(steps=500, batch_size=64, warmup_fraction=0.1, checkpoint_every=100)


@dataclass
class AdvLoRARun:
    """A ``vlalign train`` config for AdvLoRA (``options.trainable``: advlora, lora or full)."""

    method: Literal["advlora"] = option("advlora", "advlora")
    model: str = option("mini-retrieval", "model spec: mini-retrieval, a MiniCLIP, transformers CLIP or BLIP "
                                          "retrieval folder, or a hub id")
    options: AdvLoRAConfig = option(help="what is trained, the AdvLoRA parts and the training attack",
                                    factory=AdvLoRAConfig)
    train: TrainConfig = option(help="loop settings (method defaults: AdamW, lr 1e-4, weight decay 0.01)",
                                factory=_advlora_train)
    data: RetrievalData = option(help="training images and captions", factory=RetrievalData)
    eval: RetrievalEval = option(help="evaluation after training", factory=RetrievalEval)

    def __post_init__(self) -> None:
        if self.data.path is None and self.data.seed == self.eval.seed:
            raise ValueError(f"eval.seed must differ from data.seed ({self.data.seed}): evaluate on fresh images")
        if self.data.path is not None and self.eval.images and self.eval.split == self.data.split:
            raise ValueError(f"eval.split must differ from data.split ({self.data.split!r}): evaluate on images the "
                             "run never trained on")


def retrieval_training_data(data: RetrievalData, image_size: int) -> RetrievalSet | KarpathyDataset:
    """The training set: retrieval-world images rendered from ``data.seed``, or the Karpathy split (read lazily,
    resized and centre-cropped to the model's ``image_size``)."""
    if data.path is None:
        return RetrievalWorld().sample("train", int(data.images), data.seed)
    return KarpathyDataset(data.path, data.image_root, data.split, image_size, limit=data.images)


def retrieval_gallery(data: RetrievalData, spec: RetrievalEval, image_size: int) -> RetrievalSet:
    """The evaluation gallery: fresh retrieval-world test images, or the first images of the Karpathy split."""
    if data.path is None:
        return RetrievalWorld().sample("test", spec.images, spec.seed)
    return load_karpathy_split(data.path, data.image_root, spec.split, image_size, n=spec.images)


def evaluate_retrieval_run(model: ContrastiveModel, gallery: RetrievalSet, spec: RetrievalEval,
                           progress: bool = False) -> dict:
    """Recall@1/5/10 both directions and mR, clean and under PGD at each of ``spec.eps`` (and, with
    ``spec.itm_rerank``, clean after ITM re-ranking of each query's top-k)."""
    robust = {e: robust_retrieval(model, gallery, PGD(parse_eps(e), steps=spec.steps), batch_size=spec.attack_batch,
                                  progress=progress) for e in spec.eps}
    result = {"images": len(gallery), "clean": evaluate_retrieval(model, gallery), "pgd": robust}
    if spec.itm_rerank:
        result["itm_reranked"] = itm_reranked_recall(model, gallery, k=spec.itm_rerank)
    return result


def advlora_finetune(run: AdvLoRARun, out: Path | None, progress: bool = True, overwrite: bool = False
                     ) -> tuple[FitResult, AdvLoRAMethod, int]:
    """Fine-tune per ``run`` through :func:`fit` (resuming from ``out`` if a state is there); returns the result,
    the method (its peft adapter) and the number of trainable parameters."""
    model = load_model(run.model, run.train.device)
    if run.eval.images and run.eval.itm_rerank and not has_itm_head(model):
        raise ConfigError(f"eval.itm_rerank: {run.model} ({type(model).__name__}) has no image-text matching head to "
                          "re-rank with (a BLIP retrieval model has one); set it to 0")
    method = AdvLoRAMethod(model, retrieval_training_data(run.data, model.image_size), run.options)
    trainable = trainable_parameter_count(method.model)
    identity = {k: v for k, v in config_to_dict(run).items() if k not in ("train", "eval")}
    return fit(method, run.train, out, run_config=identity, progress=progress, overwrite=overwrite), method, trainable


def _final_alpha_mean(out: Path) -> float | None:
    """AdvLoRA's mean α at the last logged step (None without adaptive α); α is folded into the saved model."""
    columns = read_metrics_csv(out / "metrics.csv") if (out / "metrics.csv").is_file() else {}
    return columns["alpha_mean"][-1] if columns.get("alpha_mean") else None


def train_advlora_run(run: AdvLoRARun, out: Path, progress: bool = True, overwrite: bool = False) -> RunOutcome:
    """Fine-tune, evaluate retrieval clean and under PGD, write the model folder (and ``peft/``) and metrics."""
    began = time.perf_counter()
    out = Path(out)
    result, method, trainable = advlora_finetune(run, out, progress, overwrite)
    skipped = outcome_without_evaluation(result, out, config_to_dict(run))
    if skipped is not None:
        return skipped
    model = result.model
    total = sum(p.numel() for p in model.parameters())
    metrics = {"method": "advlora", "trainable": run.options.trainable, "adversarial": run.options.adversarial,
               "eps": run.options.eps, "base_model": run.model, "trainable_params": trainable,
               "trainable_fraction": trainable / total, "alpha_mean": _final_alpha_mean(out),
               "train": train_summary(result, run.train.steps, out)}
    gallery = retrieval_gallery(run.data, run.eval, model.image_size) if run.eval.images else None

    def evaluate(candidate: ContrastiveModel) -> dict:
        return {"eval": evaluate_retrieval_run(candidate, gallery, run.eval, progress)} if gallery is not None else {}

    def save(candidate: ContrastiveModel, folder: Path) -> None:
        save_model(candidate, folder, info={"method": "advlora", "trainable": run.options.trainable,
                                            "base_model": run.model})

    metrics.update(evaluate(model))
    save(model, out)
    if method.adapter_export is not None:
        method.save_peft_adapter(out / "peft")
    elif (out / "peft").is_dir():  # an earlier run's adapter (--overwrite): it is not this model's
        shutil.rmtree(out / "peft")
    if run.options.trainable != "full":  # a weight average of adapted weights is no rank-r adapter
        metrics["peft_adapter"] = "peft" if method.adapter_export is not None else None
    if result.alternates:  # merged models only: the peft adapter is the main model's
        metrics["alternates"] = write_alternates(result.alternates, out, save, evaluate)
    # metrics.json first: if the run stops between the two writes, train_config.json still holds the earlier eval
    # settings, so the next run evaluates again instead of reporting stale metrics.
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "train_config.json", config_to_dict(run))
    write_report(out, "train", training_report(out), run_info(seconds=time.perf_counter() - began))
    return RunOutcome(out, metrics=metrics, start_step=result.start_step, reevaluated=result.already_finished)
