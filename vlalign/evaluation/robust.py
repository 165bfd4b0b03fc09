"""Robust zero-shot evaluation: clean and per-attack accuracy, worst case per sample, gradient-masking checks.

Protocol (AutoAttack's): only clean-correct images are attacked (the others count as wrong under every
attack); every attack's output is re-scored here rather than trusted; a sample counts as robust at ε only if
it survives *every* bounded attack at that ε (the worst case per sample). The checks follow AutoAttack's
``checks.py`` and Carlini et al.'s evaluation guidelines, and turn into warnings in ``metrics.json`` and the
report: robust accuracy rising with ε or with the number of steps, a black-box attack beating all white-box
ones, zero or non-finite input gradients, and outputs that change between identical forward passes.

The checks are pure functions of the measured numbers; :func:`robust_evaluate` is the loop that measures them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vlalign.attacks.registry import attack_class, attack_norm, build_attack, is_bounded, split_attack_names
from vlalign.attacks.threat_model import format_eps
from vlalign.attacks.base import eval_mode
from vlalign.attacks.objectives import ZeroShotObjective
from vlalign.data.image_set import ImageSet
from vlalign.models.embeddings import class_text_embeddings
from vlalign.models.base import ContrastiveModel

def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


#: Key under which attacks without an ε-ball (typographic) report their single accuracy.
UNBOUNDED = "unbounded"


# ------------------------------------------------------------------------------------- pure computations

def worst_case_correct(clean_correct: torch.Tensor, correct_by_attack: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per sample: correct on the clean image and under every attack (logical AND) -> ``[N]`` bool."""
    out = clean_correct.bool().clone()
    for name, correct in correct_by_attack.items():
        if correct.shape != out.shape:
            raise ValueError(f"attack {name!r}: {tuple(correct.shape)} results for {tuple(out.shape)} samples")
        out &= correct.bool()
    return out


def eps_monotonicity_warnings(robust: Mapping[str, Mapping[float, float]], tolerance: float,
                              metric: str = "robust accuracy", fmt: Callable[[float], str] = _percent) -> list[str]:
    """Warn where an attack's robust accuracy *rises* with ε by more than ``tolerance`` (a larger ball contains
    the smaller one, so a working attack can only do better). ``metric`` and ``fmt`` name and print the score
    (e.g. ``"robust CIDEr-D"`` for captions)."""
    warnings = []
    for name, by_eps in robust.items():
        ordered = sorted(by_eps.items())
        for (eps_a, acc_a), (eps_b, acc_b) in zip(ordered, ordered[1:]):
            if acc_b > acc_a + tolerance:
                warnings.append(
                    f"{name}: {metric} rises with eps ({fmt(acc_a)} at {format_eps(eps_a)} -> "
                    f"{fmt(acc_b)} at {format_eps(eps_b)}); the attack is not converging (gradient masking or "
                    "too few steps)")
    return warnings


def steps_monotonicity_warning(name: str, eps: float, steps_few: int, acc_few: float, steps_full: int,
                               acc_full: float, tolerance: float, metric: str = "robust accuracy",
                               fmt: Callable[[float], str] = _percent) -> list[str]:
    """Warn when more attack steps gave a *higher* robust accuracy than fewer steps."""
    if acc_full > acc_few + tolerance:
        return [f"{name} at eps {format_eps(eps)}: {steps_full} steps leave {fmt(acc_full)} but "
                f"{steps_few} steps only {fmt(acc_few)}; {metric} should not rise with steps "
                "(gradient masking or a badly tuned step size)"]
    return []


def black_box_warnings(robust: Mapping[str, Mapping[float, float]], white_box: Sequence[str],
                       black_box: Sequence[str], tolerance: float, fmt: Callable[[float], str] = _percent) -> list[str]:
    """Warn where a black-box attack leaves lower accuracy than every white-box attack at the same ε."""
    warnings = []
    if not white_box:
        return warnings
    for name in black_box:
        for eps, acc in sorted(robust.get(name, {}).items()):
            best_white = min((robust[w][eps] for w in white_box if eps in robust.get(w, {})), default=None)
            if best_white is not None and acc < best_white - tolerance:
                strongest = min((w for w in white_box if eps in robust.get(w, {})), key=lambda w: robust[w][eps])
                warnings.append(
                    f"black-box {name} beats every white-box attack at eps {format_eps(eps)} ({fmt(acc)} vs "
                    f"{fmt(best_white)} for {strongest}): the gradients are likely masked or obfuscated")
    return warnings


def gradient_warnings(gradients: torch.Tensor) -> list[str]:
    """Warn about samples whose input gradient ``[N, ...]`` is non-finite or exactly zero."""
    flat = gradients.detach().flatten(1)
    n = flat.shape[0]
    warnings = []
    nonfinite = int((~torch.isfinite(flat)).any(1).sum())
    if nonfinite:
        warnings.append(f"{nonfinite} of {n} samples have NaN/inf input gradients of the CE loss: gradient attacks "
                        "on them are meaningless")
    zero = int((flat == 0).all(1).sum())
    if zero:
        warnings.append(f"{zero} of {n} samples have an all-zero input gradient of the CE loss (saturated softmax "
                        "or gradient masking); CE-based attacks stall on them, prefer APGD-DLR and Square")
    return warnings


def randomness_warnings(first: torch.Tensor, second: torch.Tensor, rtol: float = 1e-4) -> list[str]:
    """Warn when two forward passes on identical inputs disagree beyond float noise."""
    diff = float((first.float() - second.float()).abs().max()) if first.numel() else 0.0
    scale = 1.0 + float(first.float().abs().max()) if first.numel() else 1.0
    if not math.isfinite(diff) or diff > rtol * scale:
        return [f"the model's outputs change between two identical forward passes in eval mode (max |diff| "
                f"{diff:.3g}): randomness (dropout, a stochastic defence) makes single-sample gradients unreliable; "
                "use expectation over transformation"]
    return []


# ---------------------------------------------------------------------------------------------- results

@dataclass
class RobustEvaluation:
    """Per-sample results of a robust evaluation and the metrics derived from them."""

    labels: torch.Tensor
    clean_correct: torch.Tensor
    #: attack name -> ε (or :data:`UNBOUNDED`) -> per-sample correctness ``[N]`` bool
    correct: dict[str, dict[float | str, torch.Tensor]]
    eps: list[float]
    warnings: list[str] = field(default_factory=list)
    checks: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    #: zero-shot logits of the clean images ``[N, K]``
    clean_logits: torch.Tensor | None = None
    #: attack name -> ε (or :data:`UNBOUNDED`) -> predicted class per sample ``[N]`` (the clean prediction for
    #: images that were not attacked because the clean one was already wrong)
    predictions: dict[str, dict[float | str, torch.Tensor]] = field(default_factory=dict)
    #: attack name -> ε -> (sample indices ``[M]``, uint8 adversarial images ``[M, 3, H, W]``) of the first
    #: ``keep_examples`` samples the attack fooled, for a picture of what fools the model
    examples: dict[str, dict[float | str, tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.float().mean())

    def robust_accuracy(self) -> dict[str, dict[float | str, float]]:
        """attack -> ε -> accuracy."""
        return {name: {eps: float(c.float().mean()) for eps, c in by_eps.items()} for name, by_eps in self.correct.items()}

    def worst_case(self) -> dict[float, float]:
        """ε -> accuracy under the worst bounded attack per sample."""
        out = {}
        for eps in self.eps:
            per_attack = {name: by_eps[eps] for name, by_eps in self.correct.items() if eps in by_eps}
            out[eps] = float(worst_case_correct(self.clean_correct, per_attack).float().mean())
        return out

    def metrics(self) -> dict:
        """The ``metrics.json`` form: fractions, ε written as ``"4/255"``."""
        key = lambda eps: eps if isinstance(eps, str) else format_eps(eps)  # noqa: E731
        return {
            "clean": self.clean_accuracy,
            "robust": {name: {key(e): acc for e, acc in by_eps.items()} for name, by_eps in self.robust_accuracy().items()},
            "worst_case": {key(e): acc for e, acc in self.worst_case().items()},
            "warnings": list(self.warnings),
            "n": int(self.labels.numel()),
            "checks": self.checks,
            "settings": self.settings,
        }


# ------------------------------------------------------------------------------------------------ the loop

@torch.no_grad()
def _predict(model: ContrastiveModel, pixels: torch.Tensor, class_emb: torch.Tensor, batch_size: int) -> torch.Tensor:
    scale = model.logit_scale.float()
    out = []
    for start in range(0, pixels.shape[0], batch_size):
        batch = pixels[start: start + batch_size].to(model.device)
        out.append((scale * model.encode_image(batch).float() @ class_emb.t()).cpu())
    return torch.cat(out) if out else torch.empty(0, class_emb.shape[0])


def input_gradients(model: ContrastiveModel, pixels: torch.Tensor, labels: torch.Tensor,
                    class_emb: torch.Tensor) -> torch.Tensor:
    """∇ₓ CE(zero-shot logits, y) at ``pixels`` (model in eval mode, parameters untouched)."""
    from vlalign.attacks.base import attack_mode

    with attack_mode(model):
        x = pixels.to(model.device).clone().requires_grad_(True)
        logits = model.logit_scale.float() * model.encode_image(x).float() @ class_emb.t()
        grad, = torch.autograd.grad(F.cross_entropy(logits, labels.to(model.device), reduction="sum"), x)
    return grad.cpu()


def _uses(name: str, option: str) -> bool:
    import inspect

    return option in inspect.signature(attack_class(name).__init__).parameters


def robust_evaluate(model: ContrastiveModel, images: ImageSet, attacks: Sequence[str] | str, eps: Sequence[float],
                    steps: int = 20, restarts: int = 1, queries: int = 1000, batch_size: int = 128, seed: int = 0,
                    class_embeddings: torch.Tensor | None = None, templates: Sequence[str] = ("a photo of a {}",),
                    surrogate: ContrastiveModel | str | None = None, steps_check: bool = True,
                    tolerance: float | None = None, progress: bool = False, keep_examples: int = 16,
                    ) -> RobustEvaluation:
    """Attack ``images`` with every attack at every ε and run the gradient-masking checks.

    ``tolerance`` (default: one sample, 1/N) is how far an accuracy may move the "wrong" way before a check
    warns; sampling noise of a single image is not a finding. ``surrogate`` is the transfer attack's source
    model (default ``"mini"``). Per-sample predictions under every attack are kept, and the adversarial images
    of up to ``keep_examples`` fooled samples per attack and ε.
    """
    names = split_attack_names(attacks)
    eps = sorted({float(e) for e in eps})
    if not eps and any(is_bounded(n) for n in names):
        raise ValueError("no eps given for the bounded attacks")
    if steps < 1 or restarts < 1 or queries < 1 or batch_size < 1:
        raise ValueError(f"steps, restarts, queries and batch_size must be >= 1, got {steps}, {restarts}, {queries}, {batch_size}")
    n = len(images)
    if n == 0:
        raise ValueError("cannot evaluate robustness on an empty image set")
    tolerance = 1.0 / n + 1e-9 if tolerance is None else tolerance
    if class_embeddings is None:
        class_embeddings = class_text_embeddings(model, images.classnames, templates)
    class_emb = class_embeddings.float().to(model.device)
    pixels = images.pixels()
    labels = images.labels
    with eval_mode(model):
        logits = _predict(model, pixels, class_emb, batch_size)
        clean_correct = logits.argmax(1) == labels
        warnings: list[str] = []
        checks: dict = {}

        # Randomness: the same first batch twice.
        head = slice(0, min(batch_size, n))
        warnings += randomness_warnings(logits[head], _predict(model, pixels[head], class_emb, batch_size))
        grads = input_gradients(model, pixels[head], labels[head], class_emb)
        checks["zero_gradient_samples"] = int((grads.flatten(1) == 0).all(1).sum())
        checks["nonfinite_gradient_samples"] = int((~torch.isfinite(grads.flatten(1))).any(1).sum())
        warnings += gradient_warnings(grads)

        rows = clean_correct.nonzero().squeeze(1)
        chunks = [rows[i: i + batch_size] for i in range(0, rows.numel(), batch_size)]
        options = {"steps": steps, "restarts": restarts, "queries": queries,
                   "surrogate": surrogate if surrogate is not None else "mini"}
        built_surrogate: dict = {}

        def run_attack(name: str, eps_value: float | None, attack_steps: int,
                       record: tuple[dict, dict] | None = None) -> torch.Tensor:
            opts = dict(options, steps=attack_steps)
            if _uses(name, "surrogate") and "model" in built_surrogate:
                opts["surrogate"] = built_surrogate["model"]
            attack = build_attack(name, eps_value, **opts)
            if hasattr(attack, "surrogate") and "model" not in built_surrogate:
                built_surrogate["model"] = attack.surrogate  # load the surrogate once for all ε
            correct = clean_correct.clone()
            predicted = logits.argmax(1)
            fooled_index, fooled_images = [], []
            for number, chunk in enumerate(chunks):
                x = pixels[chunk].to(model.device)
                objective = ZeroShotObjective(model, images.classnames, labels[chunk], templates,
                                              class_embeddings=class_emb)
                adversarial = attack(objective, x, seed=seed * 1_000_003 + number).adversarial
                predicted[chunk] = _predict(model, adversarial, class_emb, batch_size).argmax(1)
                correct[chunk] = predicted[chunk] == labels[chunk]
                room = keep_examples - sum(len(i) for i in fooled_index)
                fooled = (~correct[chunk]).nonzero().squeeze(1)[:max(room, 0)]
                if fooled.numel():
                    fooled_index.append(chunk[fooled])
                    fooled_images.append(adversarial[fooled.to(adversarial.device)].detach().mul(255).round()
                                         .clamp_(0, 255).to(torch.uint8).cpu())
            if record is not None:
                key = eps_value if eps_value is not None else UNBOUNDED
                record[0].setdefault(name, {})[key] = predicted
                if fooled_index:
                    record[1].setdefault(name, {})[key] = (torch.cat(fooled_index), torch.cat(fooled_images))
            return correct

        correct: dict[str, dict[float | str, torch.Tensor]] = {}
        predictions: dict[str, dict[float | str, torch.Tensor]] = {}
        examples: dict[str, dict[float | str, tuple[torch.Tensor, torch.Tensor]]] = {}
        jobs = [(name, e) for name in names for e in (eps if is_bounded(name) else [None])]
        bar = tqdm(jobs, desc="robust-eval", disable=not progress)
        for name, e in bar:
            bar.set_postfix(attack=name, eps=format_eps(e) if e is not None else UNBOUNDED)
            correct.setdefault(name, {})[e if e is not None else UNBOUNDED] = run_attack(name, e, steps,
                                                                                         (predictions, examples))

        bounded = {name: by_eps for name, by_eps in correct.items() if UNBOUNDED not in by_eps}
        norms = {attack_norm(name) for name in bounded}
        if len(norms) > 1:
            warnings.append(f"the worst case mixes threat models ({', '.join(sorted(norms))}) at the same eps values; "
                            "evaluate l2 and linf attacks in separate runs")
        robust = {name: {e: float(c.float().mean()) for e, c in by_eps.items()} for name, by_eps in bounded.items()}
        warnings += eps_monotonicity_warnings(robust, tolerance)
        white = [name for name in bounded if attack_class(name).white_box]
        black = [name for name in bounded if not attack_class(name).white_box]
        warnings += black_box_warnings(robust, white, black, tolerance)

        iterative = [name for name in white if _uses(name, "steps")]
        if steps_check and iterative and steps >= 2:
            name, e = iterative[0], eps[-1]
            few = max(1, steps // 4)
            acc_few = float(run_attack(name, e, few).float().mean())
            checks["steps"] = {"attack": name, "eps": format_eps(e), "steps": {str(few): acc_few, str(steps): robust[name][e]}}
            warnings += steps_monotonicity_warning(name, e, few, acc_few, steps, robust[name][e], tolerance)
    settings = {"attacks": ",".join(names), "eps": ",".join(format_eps(e) for e in eps), "steps": steps,
                "restarts": restarts, "queries": queries, "seed": seed, "n": n,
                "attacked (clean-correct) images": int(rows.numel())}
    return RobustEvaluation(labels, clean_correct, correct, eps, warnings, checks, settings, logits, predictions,
                            examples)
