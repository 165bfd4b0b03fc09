"""``vlalign pretrain-vlm``: pretrain a MiniVLM on the mini world's questions and captions through the one loop,
evaluate it on fresh images (exact match per question type, CIDEr-D, accuracy under attack), save it.

LLaVA's recipe (:mod:`vlalign.training.methods.vlm_pretrain`): the MiniCLIP image tower named by ``tower`` is
frozen; stage 1 (``projector:``) trains the projector, stage 2 (``full:``) the projector and the decoder. Each stage
is its own :func:`~vlalign.training.loop.fit` run in a subfolder of ``out`` (``stage1_projector``,
``stage2_full``), so an interrupted run resumes exactly where it stopped: a finished stage 1 is loaded, not
trained again.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vlalign.attacks.threat_model import format_eps, parse_eps
from vlalign.config import NumberText, check_range, config_to_dict, option
from vlalign.data.vqa import QUESTION_TYPES, MiniCaptions, MiniVQA, vlm_vocabulary
from vlalign.evaluation.captioning import cider_d
from vlalign.evaluation.vlm_robust import robust_evaluate_vlm
from vlalign.evaluation.vqa import accuracy_by_type, exact_match, generate_answers
from vlalign.io import atomic_write_json
from vlalign.pipelines.runs import as_json, read_json_object
from vlalign.models.loading import load_model
from vlalign.models.mini_clip import MiniCLIP
from vlalign.models.mini_vlm import MiniVLM, mini_vlm_from_clip
from vlalign.reporting.run_report import run_info, write_report
from vlalign.reporting.training import vlm_pretraining_report
from vlalign.training.loop import fit
from vlalign.training.methods.vlm_pretrain import VLMPretrainMethod
from vlalign.training.train_config import RUN_ONLY_FIELDS, TrainConfig

#: Subfolders of the two stages' fit runs.
STAGE_DIRS = {"projector": "stage1_projector", "full": "stage2_full"}


@dataclass
class VLMShape:
    """The MiniVLM built on the tower: projector and decoder sizes."""

    hidden_size: int = option(128, "decoder width")
    layers: int = option(2, "decoder layers")
    heads: int = option(4, "decoder attention heads")
    intermediate_size: int = option(512, "decoder MLP width")
    token_merge: int = option(2, "merge k x k patch tokens into one decoder token")
    feature_layer: int = option(-1, "tower block the decoder reads (-1: the last)")

    def __post_init__(self) -> None:
        for name in ("hidden_size", "layers", "heads", "intermediate_size", "token_merge"):
            check_range(name, getattr(self, name), 1)


@dataclass
class VLMData:
    """The training questions and captions, rendered once before training."""

    qa_items: int = option(20000, "training questions")
    qa_types: list[str] = option(help="item i asks qa_types[i % len(qa_types)] (repeat a type to train on it more)",
                                 factory=lambda: [*QUESTION_TYPES, "count", "count"])
    caption_items: int = option(4000, "training captions")
    caption_word_prob: float = option(0.3, "probability that a caption image carries a written word")
    caption_batch_size: int = option(16, "captions per step (questions per step: the stage's batch_size)")
    seed: int = option(100, "seed of the training images (never the evaluation seed)")

    def __post_init__(self) -> None:
        for name in ("qa_items", "caption_items", "caption_batch_size"):
            check_range(name, getattr(self, name), 1)
        check_range("caption_word_prob", self.caption_word_prob, 0, 1)
        unknown = sorted(set(self.qa_types) - set(QUESTION_TYPES))
        if unknown or not set(QUESTION_TYPES) <= set(self.qa_types):
            raise ValueError(f"qa_types must list every question type of {list(QUESTION_TYPES)} (repeats allowed), "
                             f"got {self.qa_types}")


@dataclass
class VLMEval:
    """The final evaluation on fresh images."""

    questions: int = option(1000, "evaluation questions, balanced over the types")
    captions: int = option(200, "evaluation captions (CIDEr-D needs at least 2)")
    seed: int = option(7, "seed of the evaluation images (must differ from data.seed)")
    attack: str = option("apgd-ce", "untargeted attack on the vision input")
    attack_eps: NumberText = option("4/255", "ℓ∞ radius of the attack")
    attack_steps: int = option(20, "attack iterations")
    attack_questions: int = option(250, "the first N evaluation questions are attacked (0: no attack)")

    def __post_init__(self) -> None:
        for name in ("questions", "attack_steps"):
            check_range(name, getattr(self, name), 1)
        check_range("captions", self.captions, 2)
        check_range("attack_questions", self.attack_questions, 0)
        parse_eps(self.attack_eps)


def _projector_loop() -> TrainConfig:
    return TrainConfig(steps=150, batch_size=32, lr=1e-3, optimizer="adamw", betas=(0.9, 0.98), weight_decay=0.0,
                       warmup_fraction=0.05, grad_clip=1.0, seed=0, checkpoint_every=500, log_every=10)


def _full_loop() -> TrainConfig:
    return dataclasses.replace(_projector_loop(), steps=2000, seed=1)


@dataclass
class PretrainVLMConfig:
    """A MiniVLM pretraining run: architecture, data, the two stages' loops, and the final evaluation."""

    seed: int = option(0, "seed of the projector's and decoder's initial weights")
    tower: str = option("mini", "MiniCLIP spec ('mini' or a MiniCLIP folder) whose image tower is used, frozen")
    model: VLMShape = option(help="projector and decoder sizes", factory=VLMShape)
    data: VLMData = option(help="training questions and captions", factory=VLMData)
    projector: TrainConfig = option(help="stage 1 loop: projector only", factory=_projector_loop)
    full: TrainConfig = option(help="stage 2 loop: projector and decoder", factory=_full_loop)
    eval: VLMEval = option(help="final evaluation on fresh images", factory=VLMEval)
    threads: int = option(1, "intra-op threads (2 threads on 2 busy cores ran 15x slower: OpenMP barriers)")
    workers: int = option(2, "processes that render the training items once; the images do not depend on it")
    progress: bool = option(True, "progress bars")

    def __post_init__(self) -> None:
        check_range("threads", self.threads, 1)
        check_range("workers", self.workers, 0)
        if self.eval.seed == self.data.seed:
            raise ValueError(f"eval.seed must differ from data.seed ({self.data.seed}): evaluate on fresh images")

    def with_device(self, device: str) -> "PretrainVLMConfig":
        """A copy whose two stages train on ``device``."""
        return dataclasses.replace(self, projector=dataclasses.replace(self.projector, device=device),
                                   full=dataclasses.replace(self.full, device=device))


def build_mini_vlm(config: PretrainVLMConfig) -> MiniVLM:
    """A fresh MiniVLM on the config's tower (projector and decoder initialized from ``seed``)."""
    clip = load_model(config.tower)
    if not isinstance(clip, MiniCLIP):
        raise ValueError(f"tower {config.tower!r} is a {type(clip).__name__}; a MiniVLM needs a MiniCLIP image tower")
    torch.manual_seed(config.seed)
    return mini_vlm_from_clip(clip, vlm_vocabulary(), **dataclasses.asdict(config.model))


@torch.no_grad()
def evaluate_mini_vlm(model: MiniVLM, evaluation: VLMEval, caption_word_prob: float = 0.3,
                      progress: bool = True) -> dict:
    """Exact match per question type and CIDEr-D on fresh images, and accuracy under the untargeted attack."""
    questions = MiniVQA(evaluation.questions, evaluation.seed)
    items = [questions[i] for i in range(len(questions))]
    pixels = torch.stack([item["pixels"] for item in items])
    prompts, answers = [item["prompt"] for item in items], [item["answer"] for item in items]
    types = [item["question_type"] for item in items]
    predictions = generate_answers(model, pixels, prompts)
    clean = accuracy_by_type([exact_match(p, a) for p, a in zip(predictions, answers)], types)
    captions = MiniCaptions(evaluation.captions, evaluation.seed, caption_word_prob)
    caption_items = [captions[i] for i in range(len(captions))]
    generated = generate_answers(model, torch.stack([c["pixels"] for c in caption_items]),
                                 [c["prompt"] for c in caption_items], max_new_tokens=24)
    cider, _ = cider_d(generated, [captions.references(i) for i in range(len(captions))])
    metrics = {"exact_match": clean, "cider": cider, "n_questions": len(items), "n_captions": len(captions)}
    if evaluation.attack_questions:
        k = min(evaluation.attack_questions, len(items))
        eps = parse_eps(evaluation.attack_eps)
        with torch.enable_grad():
            robust = robust_evaluate_vlm(model, pixels[:k], prompts[:k], [[a] for a in answers[:k]], "vqa",
                                         evaluation.attack, [eps], steps=evaluation.attack_steps,
                                         seed=evaluation.seed, question_types=types[:k], progress=progress)
        result = robust.metrics()
        metrics["robust"] = {"attack": evaluation.attack, "eps": format_eps(eps), "steps": evaluation.attack_steps,
                             "n": k, "clean": result["by_type"]["clean"],
                             "accuracy": result["by_type"]["worst_case"][format_eps(eps)],
                             "warnings": result["warnings"]}
    return metrics


def _identity(config: PretrainVLMConfig) -> dict:
    """What identifies the run (both stages: a changed stage 1 invalidates stage 2's checkpoint)."""
    data = config_to_dict(config)
    for stage in STAGE_DIRS:
        data[stage] = {k: v for k, v in data[stage].items() if k not in RUN_ONLY_FIELDS}
    return {k: v for k, v in data.items() if k not in ("eval", "threads", "workers", "progress")}


def pretrain_vlm(config: PretrainVLMConfig, out: str | Path, overwrite: bool = False) -> dict:
    """Pretrain through :func:`fit` (stage 1, then stage 2, each resumable in its subfolder), evaluate, and write
    ``model.safetensors``, ``config.json``, ``pretrain_config.json``, ``metrics.json`` (with the wall time of each
    phase) and a report into ``out``. A finished run with its metrics is not trained or evaluated again."""
    out = Path(out)
    torch.set_num_threads(config.threads)
    began = time.perf_counter()
    model = build_mini_vlm(config)
    datasets = {"qa": MiniVQA(config.data.qa_items, config.data.seed, tuple(config.data.qa_types)),
                "caption": MiniCaptions(config.data.caption_items, config.data.seed, config.data.caption_word_prob)}
    method = VLMPretrainMethod(model, datasets, stage="projector",
                               batch_sizes={"caption": config.data.caption_batch_size}, cache_workers=config.workers)
    method.progress = config.progress
    method.prepare(torch.device(config.projector.device))  # the feature cache, once for both stages
    timing = {"data_and_features": time.perf_counter() - began}
    identity = _identity(config)
    finished = True
    for stage, train in (("projector", config.projector), ("full", config.full)):
        method.set_stage(stage)
        result = fit(method, train, out / STAGE_DIRS[stage], run_config={"pretrain_vlm": identity, "stage": stage},
                     progress=config.progress, overwrite=overwrite)
        trained = train.steps - result.start_step
        timing[f"{stage}_step"] = result.seconds / trained if trained else None
        finished = finished and result.already_finished
    saved = read_json_object(out / "metrics.json")  # {} when missing or unreadable: then evaluated again
    if finished and saved and (out / "model.safetensors").is_file() \
            and read_json_object(out / "pretrain_config.json").get("eval") == as_json(config_to_dict(config)["eval"]):
        return saved  # else evaluated again (eval changed), not trained
    model = method.finish().cpu()
    timing["pretraining_total"] = time.perf_counter() - began
    evaluation_start = time.perf_counter()
    metrics = evaluate_mini_vlm(model, config.eval, config.data.caption_word_prob, config.progress)
    timing["evaluation"] = time.perf_counter() - evaluation_start
    if finished:  # only evaluated again: keep the training's timings
        previous = read_json_object(out / "metrics.json").get("seconds")
        timing = {**previous, "evaluation": timing["evaluation"]} if isinstance(previous, dict) else timing
    metrics["seconds"] = timing
    model.save(out)
    # metrics.json first: if the run stops between the two writes, the config still holds the earlier eval settings,
    # so the next run evaluates again instead of reporting stale metrics.
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "pretrain_config.json", config_to_dict(config))
    write_report(out, "pretrain-vlm", vlm_pretraining_report(out), run_info(seconds=time.perf_counter() - began))
    return metrics
