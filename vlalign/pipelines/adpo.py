"""``vlalign train`` for AdPO: harden a generative VLM's vision encoder (an embedded mini VLM, a MiniVLM or LLaVA
folder, or a LLaVA hub id) through the one loop, on the mini world's prompts or on an unlabelled image folder;
evaluate exact match clean and under APGD-CE on fresh mini-world questions; save the VLM, whose encoder
``vlalign transfer`` puts into another VLM."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Dataset

from vlalign.attacks.threat_model import parse_eps
from vlalign.config import NumberText, check_range, config_to_dict, option
from vlalign.data.unlabelled import PromptedImageFolder
from vlalign.data.vqa import CAPTION_PROMPT, MiniCaptions, MiniVQA
from vlalign.evaluation.vlm_robust import robust_evaluate_vlm
from vlalign.io import atomic_write_json
from vlalign.models.vlm import GenerativeVLM
from vlalign.models.vlm_loading import load_vlm
from vlalign.pipelines.runs import RunOutcome, outcome_without_evaluation, train_summary, write_alternates
from vlalign.reporting.run_report import run_info, write_report
from vlalign.reporting.training import training_report
from vlalign.training.loop import FitResult, fit
from vlalign.training.methods.adpo import AdPO, AdPOConfig, PromptedImages
from vlalign.training.train_config import TrainConfig


@dataclass
class AdPOData:
    """AdPO's label-free training images and their prompts."""

    path: str | None = option(None, "an image folder (any images, searched recursively; labels are never read); "
                                    "null: the mini world's questions and caption prompts")
    prompts: list[str] = option(help="image folder: the prompts; image i is asked prompts[i % len(prompts)]",
                                factory=lambda: [CAPTION_PROMPT])
    questions: int = option(3840, "mini world: training questions (their answers are never read)")
    captions: int = option(960, "mini world: caption prompts (with the questions, 4,800 prompts: 150 steps of batch "
                                "32 see each once)")
    seed: int = option(500, "mini world: seed of the training images (kept apart from eval.seed)")

    def __post_init__(self) -> None:
        if not self.prompts or not all(isinstance(p, str) and p.strip() for p in self.prompts):
            raise ValueError(f"prompts must be a non-empty list of non-empty strings, got {self.prompts!r}")
        check_range("questions", self.questions, 0)
        check_range("captions", self.captions, 0)
        if self.path is None and self.questions + self.captions == 0:
            raise ValueError("the mini world needs questions + captions >= 1 training images")


@dataclass
class AdPOEval:
    """Exact match on fresh mini-world questions, clean and under APGD-CE (per question the worst case)."""

    questions: int = option(200, "fresh questions, every one attacked (0: no evaluation, e.g. for a model that "
                                 "does not know the mini world)")
    eps: list[NumberText] = option(help="ℓ∞ radii of the evaluation attack", factory=lambda: ["2/255", "4/255"])
    steps: int = option(20, "APGD-CE iterations")
    seed: int = option(4343, "seed of the evaluation questions and the attack (must differ from data.seed)")

    def __post_init__(self) -> None:
        check_range("questions", self.questions, 0)
        check_range("steps", self.steps, 1)
        if not self.eps:
            raise ValueError("eps must list at least one radius, e.g. ['4/255']")
        for e in self.eps:
            parse_eps(e)


def _adpo_train() -> TrainConfig:
    return TrainConfig(steps=150, batch_size=32, checkpoint_every=50)


@dataclass
class AdPORun:
    """A ``vlalign train`` config for AdPO."""

    method: Literal["adpo"] = option("adpo", "adpo")
    model: str = option("mini-vlm", "VLM spec: mini-vlm, mini-vlm-large, a MiniVLM or LLaVA folder, or a LLaVA hub id")
    options: AdPOConfig = option(help="objective, λ and the training attack", factory=AdPOConfig)
    train: TrainConfig = option(help="loop settings (method defaults: AdamW, lr 3e-4, betas (0.9, 0.98), weight "
                                     "decay 1e-4; for a large pretrained tower such as CLIP ViT-L use lr ~1e-5)",
                                factory=_adpo_train)
    data: AdPOData = option(help="training images and prompts", factory=AdPOData)
    eval: AdPOEval = option(help="evaluation after training", factory=AdPOEval)

    def __post_init__(self) -> None:
        if self.data.path is None and self.data.seed == self.eval.seed:
            raise ValueError(f"eval.seed must differ from data.seed ({self.data.seed}): evaluate on fresh images")
        if self.options.la_schedule != "constant" and self.options.schedule_steps != self.train.steps:
            raise ValueError(f"options.schedule_steps ({self.options.schedule_steps}) must equal train.steps "
                             f"({self.train.steps}) for a {self.options.la_schedule} λ schedule")


def adpo_dataset(data: AdPOData, model: GenerativeVLM) -> Dataset:
    """The training items ``{"index", "pixels", "prompt"}``: a folder at the model's image size, or the mini world."""
    if data.path is not None:
        return PromptedImageFolder(data.path, model.image_size, data.prompts)
    return PromptedImages(MiniVQA(data.questions, data.seed), MiniCaptions(data.captions, data.seed))


def adpo_finetune(run: AdPORun, out: Path | None, progress: bool = True, overwrite: bool = False) -> FitResult:
    """AdPO per ``run`` through :func:`fit` (resuming from ``out/state`` if present)."""
    model = load_vlm(run.model, run.train.device)
    method = AdPO(model, adpo_dataset(run.data, model), run.options)
    method.progress = progress
    identity = {k: v for k, v in config_to_dict(run).items() if k not in ("train", "eval")}
    return fit(method, run.train, out, run_config=identity, progress=progress, overwrite=overwrite)


def evaluate_adpo(model: GenerativeVLM, spec: AdPOEval, progress: bool = False) -> dict:
    """Clean and worst-case exact match (overall and per question type) on ``spec.questions`` fresh questions."""
    questions = MiniVQA(spec.questions, spec.seed)
    items = [questions[i] for i in range(len(questions))]
    evaluation = robust_evaluate_vlm(model, torch.stack([item["pixels"] for item in items]),
                                     [item["prompt"] for item in items], [[item["answer"]] for item in items], "vqa",
                                     "apgd-ce", [parse_eps(e) for e in spec.eps], steps=spec.steps, seed=spec.seed,
                                     question_types=[item["question_type"] for item in items], progress=progress)
    return evaluation.metrics()


def train_adpo_run(run: AdPORun, out: Path, progress: bool = True, overwrite: bool = False) -> RunOutcome:
    """Train, evaluate on fresh mini-world questions, write the VLM folder and its metrics."""
    began = time.perf_counter()
    out = Path(out)
    result = adpo_finetune(run, out, progress, overwrite)
    skipped = outcome_without_evaluation(result, out, config_to_dict(run))
    if skipped is not None:
        return skipped
    model = result.model
    metrics = {"method": "adpo", "loss": run.options.loss, "attack_on": run.options.attack_on,
               "attack_objective": run.options.attack_objective, "eps": run.options.eps, "base_model": run.model,
               "train": train_summary(result, run.train.steps, out)}

    def evaluate(candidate: GenerativeVLM) -> dict:
        return {"eval": evaluate_adpo(candidate, run.eval, progress)} if run.eval.questions else {}

    def save(candidate: GenerativeVLM, folder: Path) -> None:
        candidate.save(folder)

    metrics.update(evaluate(model))
    save(model, out)
    if result.alternates:
        metrics["alternates"] = write_alternates(result.alternates, out, save, evaluate)
    # metrics.json first: if the run stops between the two writes, train_config.json still holds the earlier eval
    # settings, so the next run evaluates again instead of reporting stale metrics.
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "train_config.json", config_to_dict(run))
    write_report(out, "train", training_report(out), run_info(seconds=time.perf_counter() - began))
    return RunOutcome(out, metrics=metrics, start_step=result.start_step, reevaluated=result.already_finished)
