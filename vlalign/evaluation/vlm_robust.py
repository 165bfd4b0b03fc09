"""Robust evaluation of a generative VLM: clean and attacked answers or captions, worst case per sample, and the
gradient-masking checks of :mod:`vlalign.evaluation.robust`.

Task ``vqa``: a sample's score is 1 when the greedy answer exactly matches the canonical answer (after VQA
normalization), else 0; as in AutoAttack's protocol only clean-correct questions are attacked and the others score
0 under every attack. Task ``caption``: a sample's score is its CIDEr-D against its references, and every image is
attacked. Attacks are untargeted: they maximize the negative log-likelihood of the clean ground-truth answer or
caption (:class:`~vlalign.attacks.objectives.ResponseObjective`); every attacked image is re-scored by greedy
decoding here. The worst case at ε takes per sample the lowest score over the bounded attacks.
:func:`targeted_success` measures the targeted attack (minimize the NLL of a chosen wrong answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from vlalign.attacks.base import attack_mode, eval_mode
from vlalign.attacks.objectives import ResponseObjective
from vlalign.attacks.registry import attack_class, attack_norm, build_attack, is_bounded, split_attack_names
from vlalign.attacks.threat_model import format_eps
from vlalign.evaluation.captioning import cider_d
from vlalign.evaluation.robust import (
    black_box_warnings, eps_monotonicity_warnings, gradient_warnings, randomness_warnings, steps_monotonicity_warning,
)
from vlalign.evaluation.vqa import accuracy_by_type, exact_match, generate_answers, targeted_success_rate
from vlalign.models.vlm import GenerativeVLM

TASKS = ("vqa", "caption")
#: Registered attacks that apply to a generative VLM (the others need class logits or a contrastive surrogate).
VLM_ATTACKS = ("apgd-ce", "pgd", "pgd-l2", "fgsm", "square", "embedding")


def _fmt(task: str):
    return (lambda v: f"{100 * v:.1f}%") if task == "vqa" else (lambda v: f"{v:.3f}")


@dataclass
class VLMRobustEvaluation:
    """Per-sample scores of a robust evaluation of a generative VLM and the metrics derived from them."""

    task: str
    clean_scores: torch.Tensor
    #: attack name -> ε -> per-sample scores ``[N]``
    scores: dict[str, dict[float, torch.Tensor]]
    eps: list[float]
    predictions: dict = field(default_factory=dict)
    question_types: list[str] | None = None
    warnings: list[str] = field(default_factory=list)
    checks: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    @property
    def clean(self) -> float:
        return float(self.clean_scores.float().mean())

    def robust(self) -> dict[str, dict[float, float]]:
        return {name: {e: float(s.float().mean()) for e, s in by_eps.items()} for name, by_eps in self.scores.items()}

    def worst_case_scores(self, eps: float) -> torch.Tensor:
        """Per sample, the lowest score over the clean image and every attack at ``eps``."""
        out = self.clean_scores.float().clone()
        for by_eps in self.scores.values():
            if eps in by_eps:
                out = torch.minimum(out, by_eps[eps].float())
        return out

    def worst_case(self) -> dict[float, float]:
        return {e: float(self.worst_case_scores(e).mean()) for e in self.eps}

    def metrics(self) -> dict:
        """The ``metrics.json`` form (fractions for ``vqa``, CIDEr-D for ``caption``; ε as ``"4/255"``)."""
        out = {"task": self.task, "metric": "exact match" if self.task == "vqa" else "CIDEr-D", "clean": self.clean,
               "robust": {n: {format_eps(e): v for e, v in by.items()} for n, by in self.robust().items()},
               "worst_case": {format_eps(e): v for e, v in self.worst_case().items()}}
        if self.question_types is not None:
            out["by_type"] = {
                "clean": accuracy_by_type(self.clean_scores.bool().tolist(), self.question_types),
                "worst_case": {format_eps(e): accuracy_by_type(self.worst_case_scores(e).bool().tolist(),
                                                               self.question_types) for e in self.eps}}
        out.update(warnings=list(self.warnings), n=int(self.clean_scores.numel()), checks=self.checks,
                   settings=self.settings)
        return out


def _score(task: str, predictions: list[str], references: Sequence[Sequence[str]]) -> torch.Tensor:
    if task == "vqa":
        return torch.tensor([exact_match(p, refs[0]) for p, refs in zip(predictions, references)], dtype=torch.float32)
    return torch.tensor(cider_d(predictions, references)[1], dtype=torch.float32)


def _as_float(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float().div(255.0) if pixels.dtype == torch.uint8 else pixels.float()


def response_input_gradients(model: GenerativeVLM, pixels: torch.Tensor, prompts: Sequence[str],
                             responses: Sequence[str]) -> torch.Tensor:
    """∇ₓ of the summed NLL of ``responses`` at ``pixels`` (model in eval mode, parameters untouched)."""
    with attack_mode(model):
        x = pixels.to(model.device).clone().requires_grad_(True)
        nll = -model.response_logprobs(x, prompts, responses).total.sum()
        grad, = torch.autograd.grad(nll, x)
    return grad.cpu()


def robust_evaluate_vlm(model: GenerativeVLM, pixels: torch.Tensor, prompts: Sequence[str],
                        references: Sequence[Sequence[str]], task: str = "vqa",
                        attacks: Sequence[str] | str = "apgd-ce,pgd", eps: Sequence[float] = (4 / 255,),
                        steps: int = 20, restarts: int = 1, queries: int = 1000, batch_size: int = 64, seed: int = 0,
                        max_new_tokens: int | None = None, question_types: Sequence[str] | None = None,
                        steps_check: bool = True, tolerance: float | None = None,
                        progress: bool = False) -> VLMRobustEvaluation:
    """Attack every (image, prompt) with every attack at every ε and run the gradient-masking checks.

    ``pixels``: uint8 or [0, 1] float ``[N, 3, H, W]``; ``references[i]``: the answer (``vqa``, one string) or
    the reference captions (``caption``; the first is the one the attack targets). ``tolerance`` (default: one
    sample's worth, 1/N, or 0.01 CIDEr-D) is how far a score may move the wrong way before a check warns.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    names = split_attack_names(attacks)
    unsupported = [n for n in names if n not in VLM_ATTACKS]
    if unsupported:
        raise ValueError(f"attack(s) {unsupported} do not apply to a generative VLM; use {list(VLM_ATTACKS)}")
    eps = sorted({float(e) for e in eps})
    if not eps and any(is_bounded(n) for n in names):
        raise ValueError("no eps given for the bounded attacks")
    n = pixels.shape[0]
    if n == 0 or len(prompts) != n or len(references) != n:
        raise ValueError(f"need one prompt and one reference list per image, got {n} images, {len(prompts)} prompts, "
                         f"{len(references)} references")
    if steps < 1 or restarts < 1 or queries < 1 or batch_size < 1:
        raise ValueError(f"steps, restarts, queries and batch_size must be >= 1, got {steps}, {restarts}, {queries}, {batch_size}")
    max_new_tokens = max_new_tokens or (8 if task == "vqa" else 24)
    tolerance = (1.0 / n + 1e-9 if task == "vqa" else 0.01) if tolerance is None else tolerance
    prompts, targets = list(prompts), [refs[0] for refs in references]
    with eval_mode(model):
        clean_predictions = generate_answers(model, pixels, prompts, batch_size, max_new_tokens)
        clean = _score(task, clean_predictions, references)
        warnings: list[str] = []
        head = slice(0, min(batch_size, n))
        head_pixels = _as_float(pixels[head]).to(model.device)
        with torch.no_grad():
            first = model.response_logprobs(head_pixels, prompts[head], targets[head]).total
            second = model.response_logprobs(head_pixels, prompts[head], targets[head]).total
        warnings += randomness_warnings(first, second)
        grads = response_input_gradients(model, head_pixels, prompts[head], targets[head])
        checks: dict = {"zero_gradient_samples": int((grads.flatten(1) == 0).all(1).sum()),
                        "nonfinite_gradient_samples": int((~torch.isfinite(grads.flatten(1))).any(1).sum())}
        warnings += gradient_warnings(grads)

        rows = (clean > 0.5).nonzero().squeeze(1) if task == "vqa" else torch.arange(n)
        chunks = [rows[i: i + batch_size] for i in range(0, rows.numel(), batch_size)]
        options = {"steps": steps, "restarts": restarts, "queries": queries}
        attacked = set(rows.tolist())

        def run_attack(name: str, eps_value: float | None, attack_steps: int) -> tuple[torch.Tensor, list[str]]:
            attack = build_attack(name, eps_value, **dict(options, steps=attack_steps))
            predictions = list(clean_predictions) if task == "caption" else [""] * n
            for number, chunk in enumerate(chunks):
                index = chunk.tolist()
                x = _as_float(pixels[chunk]).to(model.device)
                objective = ResponseObjective(model, [prompts[i] for i in index], [targets[i] for i in index])
                adversarial = attack(objective, x, seed=seed * 1_000_003 + number).adversarial
                answers = generate_answers(model, adversarial, [prompts[i] for i in index], batch_size, max_new_tokens)
                for i, answer in zip(index, answers):
                    predictions[i] = answer
            if task == "caption":
                return _score(task, predictions, references), predictions
            return torch.tensor([float(i in attacked and exact_match(p, targets[i]))
                                 for i, p in enumerate(predictions)]), predictions

        scores: dict[str, dict[float, torch.Tensor]] = {}
        predictions: dict = {"clean": clean_predictions}
        jobs = [(name, e) for name in names for e in (eps if is_bounded(name) else [None])]
        bar = tqdm(jobs, desc=f"robust-eval {task}", disable=not progress)
        for name, e in bar:
            bar.set_postfix(attack=name, eps=format_eps(e) if e is not None else "unbounded")
            score, preds = run_attack(name, e, steps)
            scores.setdefault(name, {})[e] = score
            predictions.setdefault(name, {})[format_eps(e)] = preds

        norms = {attack_norm(name) for name in scores}
        if len(norms) > 1:
            warnings.append(f"the worst case mixes threat models ({', '.join(sorted(norms))}) at the same eps values; "
                            "evaluate l2 and linf attacks in separate runs")
        robust = {name: {e: float(s.mean()) for e, s in by_eps.items()} for name, by_eps in scores.items()}
        metric = "robust accuracy" if task == "vqa" else "robust CIDEr-D"
        warnings += eps_monotonicity_warnings(robust, tolerance, metric, _fmt(task))
        white = [name for name in scores if attack_class(name).white_box]
        black = [name for name in scores if not attack_class(name).white_box]
        warnings += black_box_warnings(robust, white, black, tolerance, _fmt(task))
        iterative = [name for name in white if name in ("apgd-ce", "pgd", "pgd-l2")]
        if steps_check and iterative and steps >= 2:
            name, e = iterative[0], eps[-1]
            few = max(1, steps // 4)
            score_few = float(run_attack(name, e, few)[0].mean())
            checks["steps"] = {"attack": name, "eps": format_eps(e), "steps": {str(few): score_few, str(steps): robust[name][e]}}
            warnings += steps_monotonicity_warning(name, e, few, score_few, steps, robust[name][e], tolerance, metric,
                                                   _fmt(task))
    settings = {"task": task, "attacks": ",".join(names), "eps": ",".join(format_eps(e) for e in eps), "steps": steps,
                "restarts": restarts, "seed": seed, "n": n, "attacked images": int(rows.numel()),
                "max_new_tokens": max_new_tokens}
    return VLMRobustEvaluation(task, clean, scores, eps, predictions,
                               list(question_types) if question_types is not None else None, warnings, checks, settings)


def targeted_success(model: GenerativeVLM, pixels: torch.Tensor, prompts: Sequence[str], targets: Sequence[str],
                     attack: str = "apgd-ce", eps: float = 4 / 255, steps: int = 20, batch_size: int = 64,
                     seed: int = 0, max_new_tokens: int = 8) -> tuple[float, list[str]]:
    """Targeted attack: minimize the NLL of ``targets[i]`` (a chosen wrong answer) on every image; returns the
    fraction whose greedy answer becomes the target, and the answers under attack."""
    if attack not in VLM_ATTACKS or not is_bounded(attack) or not attack_class(attack).white_box:
        raise ValueError(f"targeted attacks need a white-box bounded attack from {list(VLM_ATTACKS)}, got {attack!r}")
    n = pixels.shape[0]
    if len(prompts) != n or len(targets) != n or n == 0:
        raise ValueError(f"need one prompt and one target per image, got {n} images, {len(prompts)} prompts, {len(targets)} targets")
    built = build_attack(attack, eps, steps=steps)
    predictions: list[str] = []
    for number, start in enumerate(range(0, n, batch_size)):
        x = _as_float(pixels[start: start + batch_size]).to(model.device)
        batch_prompts = list(prompts[start: start + batch_size])
        objective = ResponseObjective(model, batch_prompts, list(targets[start: start + batch_size]), targeted=True)
        adversarial = built(objective, x, seed=seed * 1_000_003 + number).adversarial
        predictions += generate_answers(model, adversarial, batch_prompts, batch_size, max_new_tokens)
    return targeted_success_rate(predictions, list(targets)), predictions
