"""The contract every attack keeps, the objective interface they all maximize, and the registry.

Contract (AutoAttack / torchattacks conventions):

- Inputs are float images in [0, 1], ``[B, 3, H, W]``; outputs are adversarial images in [0, 1] of the same
  shape, inside the attack's threat model (``‖x_adv − x‖_p ≤ ε`` for the norm-bounded ones). Normalization
  lives inside the model wrapper, so ε is always in pixel units (4/255 means four grey levels).
- The model is put in eval mode, with its parameters' ``requires_grad`` off, for the attack, and both are
  restored after: an attack called from inside a training loop leaves the loop's model as it found it.
- ``seed`` makes every random choice (starts, restarts, Square's windows, typographic words) reproducible.

An :class:`Objective` maps adversarial pixels of some samples to one loss per sample (to be maximized) and,
where it can tell, whether each sample is already fooled. Attacks touch models only through it, so the same
PGD attacks zero-shot classification, retrieval, embedding distance (FARE) or a caption's log-likelihood
under a generative VLM (AdPO).
"""

from __future__ import annotations

import importlib
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

NORMS = ("linf", "l2")


# --------------------------------------------------------------------------------------------- ε parsing

def parse_eps(text: str | float) -> float:
    """``'4/255'`` -> 0.01568..., ``'0.03'`` -> 0.03; ε must lie in (0, 1] (pixel units of [0, 1] images)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        raw = str(text).strip()
        try:
            if "/" in raw:
                num, den = raw.split("/", 1)
                value = float(num) / float(den)
            else:
                value = float(raw)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"eps must be a number or a fraction like 4/255, got {text!r}") from None
    check_eps(value)
    return value


def check_counts(**counts: int) -> None:
    """Raise a ValueError naming the first count (steps, restarts, queries, …) that is below 1."""
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def check_eps(eps: float) -> None:
    """Raise a ValueError unless ``0 < eps <= 1`` (ε is measured on images in [0, 1])."""
    if not (isinstance(eps, (int, float)) and math.isfinite(eps)) or not 0 < eps <= 1:
        hint = f"; did you mean {eps:g}/255?" if isinstance(eps, (int, float)) and 1 < eps <= 255 else ""
        raise ValueError(f"eps must be in (0, 1] on images in [0, 1] (e.g. 4/255), got {eps!r}{hint}")


def format_eps(eps: float) -> str:
    """0.01568... -> ``'4/255'``; values that are not a whole number of grey levels print as ``'%g'``."""
    levels = eps * 255
    if abs(levels - round(levels)) < 1e-6 and round(levels) > 0:
        return f"{round(levels)}/255"
    return f"{eps:g}"


# ---------------------------------------------------------------------------------- pure threat-model math

def lp_norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample ℓ∞ or ℓ2 norm of a perturbation ``[N, ...]`` -> ``[N]``."""
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1)
    if norm == "l2":
        return flat.norm(dim=1)
    raise ValueError(f"unknown norm {norm!r}; expected one of {list(NORMS)}")


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float | torch.Tensor, norm: str) -> torch.Tensor:
    """Project ``x_adv`` onto {‖x_adv − x‖ ≤ ε} ∩ [0, 1].

    ℓ∞: clip δ to [−ε, ε], then clip x + δ to [0, 1] (the order torchattacks and Madry et al. use). ℓ2: scale δ
    to the ball, then clip to [0, 1]; clipping moves each coordinate towards x, so δ stays in the ball.
    """
    delta = x_adv - x
    if norm == "linf":
        delta = torch.clamp(delta, min=-eps, max=eps)
    elif norm == "l2":
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        delta = delta * torch.clamp(eps / norms, max=1.0)
    else:
        raise ValueError(f"unknown norm {norm!r}; expected one of {list(NORMS)}")
    return torch.clamp(x + delta, 0, 1)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit norm: sign(g) for ℓ∞, g/‖g‖₂ for ℓ2 (zero where g is zero)."""
    if norm == "linf":
        return grad.sign()
    if norm == "l2":
        norms = grad.flatten(1).norm(dim=1).view(-1, *([1] * (grad.dim() - 1)))
        return grad / norms.clamp_min(1e-12)
    raise ValueError(f"unknown norm {norm!r}; expected one of {list(NORMS)}")


def random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random point of the ε-ball around ``x``, clipped to [0, 1].

    ℓ∞: δ ~ U[−ε, ε]^d. ℓ2: uniform in the ball (Gaussian direction, radius ε·U^{1/d}).
    """
    shape = x.shape
    if norm == "linf":
        delta = (torch.rand(shape, generator=generator) * 2 - 1) * eps
    elif norm == "l2":
        direction = torch.randn(shape, generator=generator)
        direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        d = x[0].numel()
        radius = eps * torch.rand(shape[0], generator=generator).pow(1.0 / d)
        delta = direction * radius.view(-1, *([1] * (x.dim() - 1)))
    else:
        raise ValueError(f"unknown norm {norm!r}; expected one of {list(NORMS)}")
    return torch.clamp(x + delta.to(device=x.device, dtype=x.dtype), 0, 1)


def check_images(images: torch.Tensor, what: str = "images") -> None:
    """Raise a ValueError unless ``images`` is a float tensor ``[B, 3, H, W]`` with values in [0, 1]."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise ValueError(f"{what} must be a float tensor in [0, 1]; got {getattr(images, 'dtype', type(images))} "
                         "(convert uint8 images with .float() / 255)")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{what} must have shape [B, 3, H, W], got {tuple(images.shape)}")
    if images.numel() and (float(images.min()) < 0 or float(images.max()) > 1):
        raise ValueError(f"{what} must lie in [0, 1], got values in [{float(images.min()):.3g}, {float(images.max()):.3g}]")


# --------------------------------------------------------------------------------------------- objectives

class ObjectiveValue(NamedTuple):
    """Per-sample loss to maximize ``[N]`` and, where the objective can tell, whether each sample is fooled."""

    loss: torch.Tensor
    fooled: torch.Tensor | None


class Objective(ABC):
    """What an attack maximizes, for a batch of ``n`` samples.

    ``index`` (a LongTensor ``[N]``) says which of the ``n`` samples each row of ``pixels`` belongs to, so one
    call can evaluate several restarts or a subset of the batch; ``None`` means ``arange(n)``. Subclasses
    implement :meth:`scores` (the one differentiable forward pass) and :meth:`loss_from_scores`; the loss and
    the fooled flags of a step come from the same forward pass.
    """

    #: Number of samples the per-sample data (labels, references, ...) describe.
    n: int

    @property
    @abstractmethod
    def model(self) -> nn.Module:
        """The module(s) the objective runs; attacks put them in eval mode and restore them after."""

    @abstractmethod
    def scores(self, pixels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The model output the loss is computed from (logits, embeddings, log-likelihoods), ``[N, ...]``."""

    @abstractmethod
    def loss_from_scores(self, scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Per-sample loss ``[N]`` to maximize."""

    def fooled_from_scores(self, scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor | None:
        """Per-sample success flags ``[N]`` (bool), or None for label-free objectives."""
        return None

    def __call__(self, pixels: torch.Tensor, index: torch.Tensor | None = None) -> ObjectiveValue:
        index = self._index(pixels, index)
        scores = self.scores(pixels, index)
        return ObjectiveValue(self.loss_from_scores(scores, index), self.fooled_from_scores(scores, index))

    def _index(self, pixels: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        if index is None:
            if pixels.shape[0] != self.n:
                raise ValueError(f"objective describes {self.n} samples but got {pixels.shape[0]} images; pass index=")
            return torch.arange(self.n, device=pixels.device)
        return index.to(pixels.device)

    def subset(self, rows: torch.Tensor) -> "Objective":
        """The same objective restricted to samples ``rows`` (renumbered 0..len(rows)−1)."""
        return SubsetObjective(self, rows)


class SubsetObjective(Objective):
    """A view of an objective on some of its samples (used to attack only the not-yet-fooled ones)."""

    def __init__(self, parent: Objective, rows: torch.Tensor) -> None:
        self.parent = parent
        self.rows = rows.long()
        self.n = int(rows.numel())

    @property
    def model(self) -> nn.Module:
        return self.parent.model

    def scores(self, pixels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.parent.scores(pixels, self.rows.to(index.device)[index])

    def loss_from_scores(self, scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.parent.loss_from_scores(scores, self.rows.to(index.device)[index])

    def fooled_from_scores(self, scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor | None:
        return self.parent.fooled_from_scores(scores, self.rows.to(index.device)[index])


class LossObjective(Objective):
    """Any differentiable ``loss_fn(pixels, index) -> [N]`` as an objective (no notion of "fooled")."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], n: int) -> None:
        self._model = model
        self.loss_fn = loss_fn
        self.n = n

    @property
    def model(self) -> nn.Module:
        return self._model

    def scores(self, pixels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(pixels, index)

    def loss_from_scores(self, scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return scores


# ------------------------------------------------------------------------------------------------ attacks

@dataclass
class AttackResult:
    """What an attack returns: adversarial images and, where it measured them, their loss and success.

    ``loss``/``fooled`` are per sample (``[B]``) under the objective the attack optimized; an evaluation should
    still re-score ``adversarial`` itself. ``history`` holds per-step traces (e.g. ``"loss"``: mean loss of the
    current iterates per step; APGD adds ``"step_size"``).
    """

    adversarial: torch.Tensor
    loss: torch.Tensor | None = None
    fooled: torch.Tensor | None = None
    history: dict[str, list] = field(default_factory=dict)


@contextmanager
def attack_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the duration of an attack; restores both exactly afterwards.

    Freezing parameters means autograd keeps no buffers for weight gradients: the backward pass computes the
    input gradient only.
    """
    modes = [(m, m.training) for m in module.modules()]
    flags = [(p, p.requires_grad) for p in module.parameters()]
    module.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


class Attack(ABC):
    """Base class: checks inputs, sets up eval mode and the seeded generator, checks the output contract."""

    #: Threat model: "linf", "l2" (ε-balls) or "unbounded" (e.g. typographic).
    norm: str = "linf"
    #: Whether the attack needs gradients of the model it attacks (white-box).
    white_box: bool = True

    def __init__(self, eps: float | None, norm: str | None = None) -> None:
        """``norm`` (for attacks that offer several) must be one of NORMS; it is checked before ε."""
        if norm is not None:
            if norm not in NORMS:
                raise ValueError(f"unknown norm {norm!r}; expected one of {list(NORMS)}")
            self.norm = norm
        if self.norm in NORMS:
            check_eps(eps)
        self.eps = eps

    def __call__(self, objective: Objective, images: torch.Tensor, seed: int = 0) -> AttackResult:
        """Attack ``images`` ([B, 3, H, W] in [0, 1]) under ``objective``; reproducible for a given ``seed``."""
        check_images(images)
        if images.shape[0] != objective.n:
            raise ValueError(f"objective describes {objective.n} samples but got {images.shape[0]} images")
        images = images.detach()
        generator = torch.Generator().manual_seed(int(seed))
        with attack_mode(objective.model):
            result = self.run(objective, images, generator)
        result.adversarial = result.adversarial.detach()
        self._check_contract(images, result.adversarial)
        return result

    @abstractmethod
    def run(self, objective: Objective, images: torch.Tensor, generator: torch.Generator) -> AttackResult:
        """The attack itself (called in eval mode with a seeded CPU generator)."""

    def _check_contract(self, images: torch.Tensor, adversarial: torch.Tensor) -> None:
        if adversarial.shape != images.shape:
            raise RuntimeError(f"{type(self).__name__} returned shape {tuple(adversarial.shape)} for {tuple(images.shape)}")
        if float(adversarial.min()) < 0 or float(adversarial.max()) > 1:
            raise RuntimeError(f"{type(self).__name__} left [0, 1]")
        if self.norm in NORMS and adversarial.numel():
            # 1e-6 absorbs float32 rounding of x + δ; a real violation is orders of magnitude larger.
            excess = float((lp_norms(adversarial - images, self.norm) - self.eps).max())
            if excess > 1e-5 * max(1.0, self.eps):
                raise RuntimeError(f"{type(self).__name__} left the {self.norm} ball of radius {self.eps} by {excess:.3g}")

    def __repr__(self) -> str:
        eps = format_eps(self.eps) if isinstance(self.eps, float) else self.eps
        return f"{type(self).__name__}(eps={eps}, norm={self.norm})"


# ---------------------------------------------------------------------------- bookkeeping shared by attacks

class BestTracker:
    """Per-row best iterate: a fooled iterate beats any unfooled one; among equals, the higher loss wins."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x.detach().clone()
        self.loss = torch.full((x.shape[0],), -math.inf, device=x.device)
        self.fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    def update(self, x: torch.Tensor, loss: torch.Tensor, fooled: torch.Tensor | None) -> torch.Tensor:
        """Take rows of ``x`` that improve on the best so far; returns the mask of rows taken."""
        loss = loss.detach().float()
        if fooled is None:
            better = loss > self.loss
        else:
            fooled = fooled.to(self.fooled.device)
            better = (fooled & ~self.fooled) | ((fooled == self.fooled) & (loss > self.loss))
            self.fooled |= fooled
        # torch.where rather than masked assignment: no host-device sync per step on a GPU.
        self.x = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x.detach(), self.x)
        self.loss = torch.where(better, loss, self.loss)
        return better


def select_over_restarts(x: torch.Tensor, loss: torch.Tensor, fooled: torch.Tensor | None,
                         restarts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Rows are ``restarts`` stacked copies of a batch of B; per sample keep the best copy (fooled, then loss)."""
    if restarts == 1:
        return x, loss, fooled
    b = x.shape[0] // restarts
    # Lexicographic key: fooled first, then the loss rank (NaN lowest).
    ranks = loss.view(restarts, b).nan_to_num(nan=-math.inf).argsort(dim=0, stable=True).argsort(dim=0, stable=True)
    key = ranks if fooled is None else ranks + restarts * fooled.view(restarts, b).long()
    choice = key.argmax(0)
    rows = choice * b + torch.arange(b, device=x.device)
    return x[rows], loss[rows], (fooled[rows] if fooled is not None else None)


# ------------------------------------------------------------------------------------------------ registry

@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: ``"module:Class"`` and the keyword arguments that make it this variant."""

    target: str
    defaults: dict = field(default_factory=dict)
    description: str = ""

    def resolve(self) -> type[Attack]:
        module_name, class_name = self.target.split(":")
        return getattr(importlib.import_module(module_name), class_name)


ATTACKS: dict[str, AttackSpec] = {
    "pgd": AttackSpec("vlalign.attacks.pgd:PGD", {"norm": "linf"}, "PGD, ℓ∞ (Madry et al. 2018)"),
    "pgd-l2": AttackSpec("vlalign.attacks.pgd:PGD", {"norm": "l2"}, "PGD, ℓ2 (Madry et al. 2018)"),
    "fgsm": AttackSpec("vlalign.attacks.fgsm:FGSM", {}, "FGSM, ℓ∞ (Goodfellow et al. 2015)"),
    "apgd-ce": AttackSpec("vlalign.attacks.apgd:APGD", {"loss": "ce"}, "APGD-CE, ℓ∞ (Croce & Hein 2020)"),
    "apgd-dlr": AttackSpec("vlalign.attacks.apgd:APGD", {"loss": "dlr"}, "APGD-DLR, ℓ∞ (Croce & Hein 2020)"),
    "apgd-t": AttackSpec("vlalign.attacks.apgd:APGDTargeted", {}, "APGD-T, targeted DLR, ℓ∞ (Croce & Hein 2020)"),
    "square": AttackSpec("vlalign.attacks.square:Square", {}, "Square, score-based black-box, ℓ∞ (Andriushchenko et al. 2020)"),
    "transfer": AttackSpec("vlalign.attacks.transfer:TransferAttack", {}, "PGD on a surrogate model, evaluated on the target"),
    "embedding": AttackSpec("vlalign.attacks.embedding:EmbeddingAttack", {}, "label-free embedding-space PGD (FARE)"),
    "typographic": AttackSpec("vlalign.attacks.typographic:TypographicAttack", {}, "write another class name (unbounded)"),
}

#: Options the command line passes to every attack; each attack takes the ones it has.
COMMON_OPTIONS = ("steps", "restarts", "queries", "surrogate")


def register_attack(name: str, target: str, defaults: dict | None = None, description: str = "") -> None:
    """Register ``"module:Class"`` (an :class:`Attack` subclass) under ``name`` with fixed keyword ``defaults``."""
    spec = AttackSpec(target, dict(defaults or {}), description)
    if name in ATTACKS and ATTACKS[name] != spec:
        raise ValueError(f"attack {name!r} is already registered as {ATTACKS[name].target}")
    ATTACKS[name] = spec


def attack_names() -> list[str]:
    """Names accepted by :func:`build_attack` (and ``--attack``)."""
    return sorted(ATTACKS)


def attack_class(name: str) -> type[Attack]:
    """The class registered under ``name``."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; expected one of {attack_names()}")
    return ATTACKS[name].resolve()


def build_attack(name: str, eps: float | None = None, **options: object) -> Attack:
    """Build the attack registered as ``name``.

    Options in :data:`COMMON_OPTIONS` (``steps``, ``restarts``, ...) go to the attacks that take them and are
    skipped by the others; any other option must be a parameter of the attack, or this raises a TypeError.
    """
    cls = attack_class(name)
    params = inspect.signature(cls.__init__).parameters
    kwargs = dict(ATTACKS[name].defaults)
    for key, value in options.items():
        if key in params:
            if value is not None:
                kwargs[key] = value
        elif key not in COMMON_OPTIONS:
            accepted = sorted(k for k in params if k != "self")
            raise TypeError(f"attack {name!r} takes no option {key!r}; it takes {accepted}")
    if "eps" in params:
        kwargs["eps"] = eps
    return cls(**kwargs)


def attack_norm(name: str) -> str:
    """Threat model of the attack registered as ``name``: "linf", "l2" or "unbounded"."""
    return ATTACKS[name].defaults.get("norm", attack_class(name).norm)


def is_bounded(name: str) -> bool:
    """Whether the attack registered as ``name`` has an ε-ball threat model."""
    return attack_norm(name) in NORMS


def split_attack_names(text: str | Sequence[str]) -> list[str]:
    """``'apgd-ce,pgd'`` -> ``['apgd-ce', 'pgd']``, each checked against the registry."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else [str(n).strip() for n in text]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"no attack named; expected a comma-separated list from {attack_names()}")
    for n in names:
        attack_class(n)
    if len(set(names)) != len(names):
        raise ValueError(f"attack list has duplicates: {names}")
    return names
