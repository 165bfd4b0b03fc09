"""``vlalign pretrain-vlm``: pretrain a MiniVLM on the mini world's questions and captions, evaluate it on fresh
images (exact match per question type, CIDEr-D, accuracy under attack), save it.

LLaVA's recipe (:mod:`vlalign.training.methods.vlm_pretrain`): the MiniCLIP image tower named by ``tower`` is
frozen; stage 1 trains the projector, stage 2 the projector and the decoder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from vlalign.attacks.threat_model import format_eps, parse_eps
from vlalign.config import config_to_dict
from vlalign.data.vqa import QUESTION_TYPES, MiniCaptions, MiniVQA, vlm_vocabulary
from vlalign.evaluation.captioning import cider_d
from vlalign.evaluation.vlm_robust import robust_evaluate_vlm
from vlalign.evaluation.vqa import accuracy_by_type, exact_match, generate_answers
from vlalign.io import atomic_write_json
from vlalign.models.loading import load_model
from vlalign.models.mini_clip import MiniCLIP
from vlalign.models.mini_vlm import MiniVLM, mini_vlm_from_clip
from vlalign.training.method import Method
from vlalign.training.methods.vlm_pretrain import VLMPretrainMethod
from vlalign.training.schedule import warmup_cosine


@dataclass
class PretrainVLMConfig:
    """A MiniVLM pretraining run: architecture, data, the two stages, and the final evaluation."""

    seed: int = 0
    #: MiniCLIP spec ("mini" or a MiniCLIP folder) whose image tower is used, frozen.
    tower: str = "mini"
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 512
    token_merge: int = 2
    #: Tower block the decoder reads (-1: the last).
    feature_layer: int = -1
    #: Training data: ``qa_items`` questions and ``caption_items`` captions rendered from ``data_seed``; item i asks
    #: ``qa_types[i % len(qa_types)]`` (repeat a type to train on it more).
    qa_items: int = 20000
    qa_types: list[str] = field(default_factory=lambda: [*QUESTION_TYPES, "count", "count"])
    caption_items: int = 4000
    caption_word_prob: float = 0.3
    data_seed: int = 100
    #: Stage 1 (projector) and stage 2 (projector + decoder): steps and learning rates (AdamW, warm-up + cosine).
    projector_steps: int = 150
    full_steps: int = 2000
    batch_size: int = 32
    caption_batch_size: int = 16
    projector_lr: float = 1e-3
    full_lr: float = 1e-3
    warmup_fraction: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    #: Evaluation on fresh images (``eval_seed`` differs from ``data_seed``): questions balanced over the types.
    eval_questions: int = 1000
    eval_captions: int = 200
    eval_seed: int = 7
    #: Untargeted attack on the vision input, on the first ``attack_questions`` evaluation questions.
    attack: str = "apgd-ce"
    attack_eps: str = "4/255"
    attack_steps: int = 20
    attack_questions: int = 250
    threads: int = 1
    #: Processes that render the training items once, before training (the images do not depend on it).
    workers: int = 2
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("qa_items", "caption_items", "full_steps", "batch_size", "caption_batch_size", "eval_questions",
                     "eval_captions", "attack_steps", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("projector_steps", "attack_questions"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        unknown = sorted(set(self.qa_types) - set(QUESTION_TYPES))
        if unknown or not set(QUESTION_TYPES) <= set(self.qa_types):
            raise ValueError(f"qa_types must list every question type of {list(QUESTION_TYPES)} (repeats allowed), "
                             f"got {self.qa_types}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.eval_captions < 2:
            raise ValueError(f"eval_captions must be >= 2 (CIDEr-D needs a corpus), got {self.eval_captions}")
        if self.eval_seed == self.data_seed:
            raise ValueError(f"eval_seed must differ from data_seed ({self.data_seed}): evaluate on fresh images")
        for name in ("projector_lr", "full_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        parse_eps(self.attack_eps)


# ------------------------------------------------------------------------------------------------------------
# TEMPORARY: a minimal private loop, only until the one loop `vlalign.training.loop.fit` lands on main.
# The lead replaces `_temporary_fit` by `fit(method, TrainConfig(steps=..., batch_size=..., lr=..., optimizer="adamw",
# betas=(0.9, 0.98), weight_decay=..., warmup_fraction=..., grad_clip=..., seed=...))`; nothing else calls it.
# ------------------------------------------------------------------------------------------------------------
def _temporary_fit(method: Method, steps: int, batch_size: int, lr: float, weight_decay: float,
                   warmup_fraction: float, grad_clip: float, seed: int, progress: bool, desc: str) -> float:
    """Train ``method`` for ``steps`` steps (one batch of every stream per step); returns seconds per step."""
    generator = torch.Generator().manual_seed(seed)

    def batches(stream):
        loader = DataLoader(stream.dataset, batch_size=stream.batch_size or batch_size, drop_last=True,
                            sampler=RandomSampler(stream.dataset, generator=generator))
        while True:
            yield from loader

    iterators = {name: batches(stream) for name, stream in method.streams().items()}
    params = [p for group in method.param_groups(weight_decay) for p in group["params"]]
    optimizer = torch.optim.AdamW(method.param_groups(weight_decay), lr=lr, betas=(0.9, 0.98))
    scheduler = warmup_cosine(optimizer, steps, warmup_fraction)
    method.train()
    start = time.time()
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for _ in bar:
        out = method({name: next(it) for name, it in iterators.items()})
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        scheduler.step()
        bar.set_postfix({k: f"{float(v.detach()):.3f}" for k, v in out.items()})
    method.eval()
    return (time.time() - start) / max(1, steps)


def build_mini_vlm(config: PretrainVLMConfig) -> MiniVLM:
    """A fresh MiniVLM on the config's tower (projector and decoder initialized from ``seed``)."""
    clip = load_model(config.tower)
    if not isinstance(clip, MiniCLIP):
        raise ValueError(f"tower {config.tower!r} is a {type(clip).__name__}; a MiniVLM needs a MiniCLIP image tower")
    torch.manual_seed(config.seed)
    return mini_vlm_from_clip(clip, vlm_vocabulary(), hidden_size=config.hidden_size, layers=config.layers,
                              heads=config.heads, intermediate_size=config.intermediate_size,
                              token_merge=config.token_merge, feature_layer=config.feature_layer)


@torch.no_grad()
def evaluate_mini_vlm(model: MiniVLM, config: PretrainVLMConfig) -> dict:
    """Exact match per question type and CIDEr-D on fresh images, and accuracy under the untargeted attack."""
    questions = MiniVQA(config.eval_questions, config.eval_seed)
    items = [questions[i] for i in range(len(questions))]
    pixels = torch.stack([item["pixels"] for item in items])
    prompts, answers = [item["prompt"] for item in items], [item["answer"] for item in items]
    types = [item["question_type"] for item in items]
    predictions = generate_answers(model, pixels, prompts)
    clean = accuracy_by_type([exact_match(p, a) for p, a in zip(predictions, answers)], types)
    captions = MiniCaptions(config.eval_captions, config.eval_seed, config.caption_word_prob)
    caption_items = [captions[i] for i in range(len(captions))]
    generated = generate_answers(model, torch.stack([c["pixels"] for c in caption_items]),
                                 [c["prompt"] for c in caption_items], max_new_tokens=24)
    cider, _ = cider_d(generated, [captions.references(i) for i in range(len(captions))])
    metrics = {"exact_match": clean, "cider": cider, "n_questions": len(items), "n_captions": len(captions)}
    if config.attack_questions:
        k = min(config.attack_questions, len(items))
        with torch.enable_grad():
            robust = robust_evaluate_vlm(model, pixels[:k], prompts[:k], [[a] for a in answers[:k]], "vqa",
                                         config.attack, [parse_eps(config.attack_eps)], steps=config.attack_steps,
                                         seed=config.eval_seed, question_types=types[:k], progress=config.progress)
        result = robust.metrics()
        eps = format_eps(parse_eps(config.attack_eps))
        metrics["robust"] = {"attack": config.attack, "eps": eps, "steps": config.attack_steps, "n": k,
                             "clean": result["by_type"]["clean"], "accuracy": result["by_type"]["worst_case"][eps],
                             "warnings": result["warnings"]}
    return metrics


def pretrain_vlm(config: PretrainVLMConfig, out: str | Path) -> dict:
    """Pretrain, evaluate and write ``model.safetensors``, ``config.json``, ``pretrain_config.json`` and
    ``metrics.json`` (with the wall time of each phase) into ``out``."""
    out = Path(out)
    torch.set_num_threads(config.threads)
    started = time.time()
    model = build_mini_vlm(config)
    datasets = {"qa": MiniVQA(config.qa_items, config.data_seed, tuple(config.qa_types)),
                "caption": MiniCaptions(config.caption_items, config.data_seed, config.caption_word_prob)}
    method = VLMPretrainMethod(model, datasets, stage="projector", batch_sizes={"caption": config.caption_batch_size},
                               cache_workers=config.workers)
    method.progress = config.progress
    method.prepare(torch.device(config.device))
    data_seconds = time.time() - started
    timing = {"data_and_features": data_seconds}
    if config.projector_steps:
        timing["projector_step"] = _temporary_fit(method, config.projector_steps, config.batch_size, config.projector_lr,
                                                  config.weight_decay, config.warmup_fraction, config.grad_clip,
                                                  config.seed, config.progress, "stage 1: projector")
    method.set_stage("full")
    timing["full_step"] = _temporary_fit(method, config.full_steps, config.batch_size, config.full_lr,
                                         config.weight_decay, config.warmup_fraction, config.grad_clip,
                                         config.seed + 1, config.progress, "stage 2: projector + decoder")
    model = method.finish()
    timing["pretraining_total"] = time.time() - started
    evaluation_start = time.time()
    metrics = evaluate_mini_vlm(model, config)
    timing["evaluation"] = time.time() - evaluation_start
    metrics["seconds"] = timing
    model.save(out)
    atomic_write_json(out / "pretrain_config.json", config_to_dict(config))
    atomic_write_json(out / "metrics.json", metrics)
    return metrics
