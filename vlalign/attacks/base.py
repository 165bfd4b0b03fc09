"""The contract every attack keeps, and the objective interface they all maximize.

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

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from vlalign.attacks.threat_model import NORMS, check_eps, check_images, format_eps, lp_norms


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
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for the duration of the block; restores every submodule's own mode afterwards (``module.train(
    was_training)`` would not: it would put a submodule that was deliberately in eval, a frozen stem, in train)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def attack_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the duration of an attack; restores both exactly afterwards.

    Freezing parameters means autograd keeps no buffers for weight gradients: the backward pass computes the
    input gradient only.
    """
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with eval_mode(module), torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class Attack(ABC):
    """Base class: checks inputs, sets up eval mode and the seeded generator, checks the output contract."""

    #: Threat model: "linf", "l2" (ε-balls) or "unbounded" (e.g. typographic).
    norm: str = "linf"
    #: Whether the attack needs gradients of the model it attacks (white-box).
    white_box: bool = True
    #: Whether :meth:`__call__` accepts ``sample_seeds`` (per-sample random choices).
    per_sample_seeds: bool = False

    def __init__(self, eps: float | None, norm: str | None = None) -> None:
        """``norm`` (for attacks that offer several) must be one of NORMS; it is checked before ε."""
        if norm is not None:
            if norm not in NORMS:
                raise ValueError(f"unknown norm {norm!r}; expected one of {list(NORMS)}")
            self.norm = norm
        if self.norm in NORMS:
            check_eps(eps)
        self.eps = eps

    def __call__(self, objective: Objective, images: torch.Tensor, seed: int = 0,
                 sample_seeds: Sequence[int] | None = None) -> AttackResult:
        """Attack ``images`` ([B, 3, H, W] in [0, 1]) under ``objective``; reproducible for a given ``seed``.

        ``sample_seeds`` (one per image, for attacks with ``per_sample_seeds``) gives each image its own random
        choices, so its adversarial image does not depend on the rest of the batch (data-parallel training).
        """
        check_images(images)
        if images.shape[0] != objective.n:
            raise ValueError(f"objective describes {objective.n} samples but got {images.shape[0]} images")
        images = images.detach()
        if sample_seeds is not None:
            if not self.per_sample_seeds:
                raise ValueError(f"{type(self).__name__} does not take per-sample seeds")
            if len(sample_seeds) != images.shape[0]:
                raise ValueError(f"got {len(sample_seeds)} sample seeds for {images.shape[0]} images")
            generator = [torch.Generator().manual_seed(int(s)) for s in sample_seeds]
        else:
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
        if not bool(torch.isfinite(adversarial).all()):
            # Checked first: every comparison below is False for NaN, so a NaN image would pass them all.
            raise RuntimeError(f"{type(self).__name__} returned non-finite pixels (NaN or inf): the objective's "
                               f"gradient is likely non-finite at these images")
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
