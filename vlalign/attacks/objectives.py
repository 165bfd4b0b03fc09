"""Objectives attacks can target: zero-shot logits, retrieval similarity, embedding distance, caption likelihood,
and the likelihood of a generative VLM's response.

Everything frozen is computed once at construction: class-prompt or caption embeddings, the logit scale,
clean reference embeddings. A step of an attack then costs one image-tower forward and backward.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from vlalign.attacks.base import Objective, eval_mode
from vlalign.attacks.losses import LOGIT_LOSSES, TARGETED_LOSSES, logit_loss
from vlalign.models.embeddings import class_text_embeddings
from vlalign.models.base import ContrastiveModel
from vlalign.models.vlm import GenerativeVLM


class LogitObjective(Objective):
    """Logits ``s · I(x)ᵀ T_k`` against K frozen, normalized text embeddings ``candidates`` ``[K, D]``.

    ``labels`` ``[n]`` index the correct candidate. ``loss`` is one of :data:`LOGIT_LOSSES`. A sample counts as
    fooled when its top-1 candidate is not its label (``success="untargeted"``) or is its target
    (``"targeted"``, the default whenever ``targets`` are given to :meth:`targeted`).
    """

    def __init__(self, model: ContrastiveModel, candidates: torch.Tensor, labels: torch.Tensor, loss: str = "ce",
                 targets: torch.Tensor | None = None, success: str = "untargeted") -> None:
        if loss not in LOGIT_LOSSES:
            raise ValueError(f"unknown loss {loss!r}; expected one of {list(LOGIT_LOSSES)}")
        if success not in ("untargeted", "targeted"):
            raise ValueError(f"success must be 'untargeted' or 'targeted', got {success!r}")
        if candidates.dim() != 2 or candidates.shape[0] < 2:
            raise ValueError(f"candidates must be [K >= 2, D] text embeddings, got {tuple(candidates.shape)}")
        if labels.dim() != 1:
            raise ValueError(f"labels must be [n], got {tuple(labels.shape)}")
        if (loss in TARGETED_LOSSES or success == "targeted") and (targets is None or targets.shape != labels.shape):
            raise ValueError(f"loss {loss!r} / success {success!r} needs targets of shape {tuple(labels.shape)}")
        device = model.device
        self._model = model
        self.candidates = candidates.detach().to(device=device, dtype=torch.float32)
        self.labels = labels.long().to(device)
        self.targets = None if targets is None else targets.long().to(device)
        self.loss = loss
        self.success = success
        self.scale = model.logit_scale.detach().float()
        self.n = int(labels.numel())

    @property
    def model(self) -> ContrastiveModel:
        return self._model

    def scores(self, pixels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.scale * self._model.encode_image(pixels) @ self.candidates.t()

    def loss_from_scores(self, scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        targets = None if self.targets is None else self.targets[index]
        return logit_loss(self.loss, scores, self.labels[index], targets)

    def fooled_from_scores(self, scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        predictions = scores.detach().argmax(1)
        if self.success == "targeted":
            return predictions == self.targets[index]
        return predictions != self.labels[index]

    def with_loss(self, loss: str, targets: torch.Tensor | None = None, success: str | None = None) -> "LogitObjective":
        """The same objective (sharing its frozen embeddings) with another loss and/or targets."""
        other = copy.copy(self)
        other.loss = loss
        if targets is not None:
            other.targets = targets.long().to(self.labels.device)
        if success is not None:
            other.success = success
        if loss not in LOGIT_LOSSES:
            raise ValueError(f"unknown loss {loss!r}; expected one of {list(LOGIT_LOSSES)}")
        if (loss in TARGETED_LOSSES or other.success == "targeted") and other.targets is None:
            raise ValueError(f"loss {loss!r} needs targets")
        return other

    def targeted(self, targets: torch.Tensor, loss: str = "ce-targeted") -> "LogitObjective":
        """A targeted version: maximize the target's score; success means predicting the target."""
        return self.with_loss(loss, targets, success="targeted")

    def for_model(self, model: ContrastiveModel) -> "LogitObjective":
        """The same objective on another model (needs the texts; see subclasses)."""
        raise TypeError(f"{type(self).__name__} has no texts to re-embed for another model; use ZeroShotObjective "
                        "or RetrievalObjective")


class ZeroShotObjective(LogitObjective):
    """Zero-shot classification among ``classnames`` by class-prompt similarity (CLIP's zero-shot protocol)."""

    def __init__(self, model: ContrastiveModel, classnames: Sequence[str], labels: torch.Tensor,
                 templates: Sequence[str] = ("a photo of a {}",), class_embeddings: torch.Tensor | None = None,
                 loss: str = "ce", targets: torch.Tensor | None = None, success: str = "untargeted") -> None:
        if class_embeddings is None:
            class_embeddings = class_text_embeddings(model, classnames, templates)
        if class_embeddings.shape[0] != len(classnames):
            raise ValueError(f"got {class_embeddings.shape[0]} class embeddings for {len(classnames)} classes")
        super().__init__(model, class_embeddings, labels, loss, targets, success)
        self.classnames = tuple(classnames)
        self.templates = tuple(templates)

    def for_model(self, model: ContrastiveModel) -> "ZeroShotObjective":
        return ZeroShotObjective(model, self.classnames, self.labels.cpu(), self.templates, loss=self.loss,
                                 targets=None if self.targets is None else self.targets.cpu(), success=self.success)


class RetrievalObjective(LogitObjective):
    """Image→text retrieval: image i should retrieve caption ``matches[i]`` out of ``texts``.

    ``loss="ce"`` pushes the matching caption down the ranking; ``loss="similarity"`` lowers the image-caption
    similarity itself, which also hurts text→image retrieval of that image. Fooled: the top-1 caption is
    not the matching one.
    """

    def __init__(self, model: ContrastiveModel, texts: Sequence[str] | None, matches: torch.Tensor,
                 text_embeddings: torch.Tensor | None = None, loss: str = "ce") -> None:
        if text_embeddings is None:
            if not texts:
                raise ValueError("RetrievalObjective needs texts or text_embeddings")
            with torch.no_grad():
                text_embeddings = model.encode_text(list(texts))
        super().__init__(model, text_embeddings, matches, loss)
        self.texts = None if texts is None else list(texts)

    def for_model(self, model: ContrastiveModel) -> "RetrievalObjective":
        if self.texts is None:
            return super().for_model(model)
        return RetrievalObjective(model, self.texts, self.labels.cpu(), loss=self.loss)


class EmbeddingObjective(Objective):
    """Label-free: ‖φ(x + δ) − φ_ref(x)‖₂² per sample, φ the image encoder (FARE, Schlarmann et al. 2024, eq. 3).

    The square has the same maximizer as the norm and, unlike it, a gradient everywhere (zero at δ = 0, so
    attacks on it start at a random point). ``normalize=False`` uses the raw projected embeddings, as FARE
    does; ``reference`` ``[n, D]`` is computed once, usually by the frozen original model on clean images.
    ``model`` is anything with ``encode_image(pixels, normalize=)``: a ContrastiveModel, or a GenerativeVLM,
    whose embedding is the flattened patch features its decoder reads (AdPO's inner maximization).
    """

    def __init__(self, model: ContrastiveModel | GenerativeVLM, reference: torch.Tensor, normalize: bool = False) -> None:
        if reference.dim() != 2:
            raise ValueError(f"reference embeddings must be [n, D], got {tuple(reference.shape)}")
        self._model = model
        self.reference = reference.detach().to(model.device, torch.float32)
        self.normalize = normalize
        self.n = int(reference.shape[0])

    @classmethod
    @torch.no_grad()
    def from_images(cls, model: ContrastiveModel | GenerativeVLM, images: torch.Tensor,
                    reference_model: ContrastiveModel | GenerativeVLM | None = None,
                    normalize: bool = False) -> "EmbeddingObjective":
        """References φ_ref(x) from ``reference_model`` (default: ``model`` itself) on the clean ``images``."""
        ref_model = reference_model if reference_model is not None else model
        with eval_mode(ref_model):
            reference = ref_model.encode_image(images.to(ref_model.device), normalize=normalize).float()
        return cls(model, reference, normalize)

    @property
    def model(self) -> ContrastiveModel | GenerativeVLM:
        return self._model

    def scores(self, pixels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self._model.encode_image(pixels, normalize=self.normalize).float()

    def loss_from_scores(self, scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return (scores - self.reference[index]).pow(2).sum(1)


class CaptionLikelihoodObjective(Objective):
    """The log-likelihood of a caption under a generative VLM, ``log p(caption_i | x_i)`` (AdPO's attack target).

    ``log_likelihood(pixels, captions) -> [N]`` is the model's differentiable scorer. Untargeted: make the
    (correct) caption unlikely (loss = −log p); ``targeted=True``: make the given caption likely (loss = log p).
    """

    def __init__(self, model: nn.Module, log_likelihood: Callable[[torch.Tensor, list[str]], torch.Tensor],
                 captions: Sequence[str], targeted: bool = False) -> None:
        if not captions:
            raise ValueError("CaptionLikelihoodObjective needs one caption per image, got none")
        self._model = model
        self.log_likelihood = log_likelihood
        self.captions = list(captions)
        self.targeted = targeted
        self.n = len(self.captions)

    @property
    def model(self) -> nn.Module:
        return self._model

    def scores(self, pixels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        scores = self.log_likelihood(pixels, [self.captions[i] for i in index.tolist()])
        if scores.shape != (pixels.shape[0],):
            raise ValueError(f"log_likelihood must return one value per image [N], got {tuple(scores.shape)}")
        return scores

    def loss_from_scores(self, scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return scores if self.targeted else -scores


class ResponseObjective(CaptionLikelihoodObjective):
    """log p(response_i | x_i, prompt_i) under a :class:`GenerativeVLM`, with success flags from the same pass.

    Untargeted (``targeted=False``; ``responses`` are the clean answers or captions): loss = −log p, the summed
    next-token cross-entropy of the response, to maximize; fooled = greedy decoding no longer reproduces the
    response. Targeted (``responses`` are the attacker's chosen outputs): loss = log p; fooled (success) = greedy
    decoding now produces the target. Greedy decoding reproduces a response exactly when every one of its tokens
    is the top-1 choice under teacher forcing, so one forward pass decides it (see ``ResponseScores``).
    """

    def __init__(self, model: GenerativeVLM, prompts: Sequence[str], responses: Sequence[str],
                 targeted: bool = False) -> None:
        if not isinstance(model, GenerativeVLM):
            raise TypeError(f"ResponseObjective needs a GenerativeVLM, got {type(model).__name__}")
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts for {len(responses)} responses")
        super().__init__(model, self._log_likelihood, responses, targeted)
        self.prompts = list(prompts)
        #: APGD-CE (``loss="ce"``) maximizes this objective's own loss, which is a cross-entropy of the response
        #: tokens (negated for a targeted attack, as ``ce-targeted`` negates the logit cross-entropy).
        self.native_loss = "ce"

    def _log_likelihood(self, pixels: torch.Tensor, responses: list[str], index: torch.Tensor | None = None) -> torch.Tensor:
        rows = range(len(responses)) if index is None else index.tolist()
        return self._model.response_logprobs(pixels, [self.prompts[i] for i in rows], responses).total

    def scores(self, pixels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        rows = index.tolist()
        result = self._model.response_logprobs(pixels, [self.prompts[i] for i in rows], [self.captions[i] for i in rows])
        # Column 0: log p (differentiable); column 1: whether greedy decoding gives the response (a constant).
        return torch.stack([result.total.float(), result.greedy_match.float()], dim=1)

    def loss_from_scores(self, scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return scores[:, 0] if self.targeted else -scores[:, 0]

    def fooled_from_scores(self, scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        reproduced = scores[:, 1].detach() > 0.5
        return reproduced if self.targeted else ~reproduced
