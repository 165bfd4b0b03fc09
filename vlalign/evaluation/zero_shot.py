"""Zero-shot classification accuracy and written-label rate, over class-prompt embeddings computed once."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlalign.data.image_set import ImageSet
from vlalign.models.base import ContrastiveModel
from vlalign.models.embeddings import class_text_embeddings, image_embeddings


@dataclass
class ZeroShotResult:
    """Per-image predictions of a zero-shot evaluation and the metrics derived from them."""

    predictions: torch.Tensor
    labels: torch.Tensor
    written: torch.Tensor
    logits: torch.Tensor

    @property
    def accuracy(self) -> float:
        return accuracy(self.predictions, self.labels)

    @property
    def written_label_rate(self) -> float:
        return written_label_rate(self.predictions, self.written)

    def metrics(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {"accuracy": self.accuracy, "n": int(self.labels.numel())}
        if bool((self.written >= 0).any()):
            out["written_label_rate"] = self.written_label_rate
        return out


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of predictions equal to the labels."""
    if labels.numel() == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float((predictions == labels).float().mean())


def written_label_rate(predictions: torch.Tensor, written: torch.Tensor) -> float:
    """Share of images carrying a written class name whose prediction equals that name.

    ``written`` is ``[N]`` (one word per image) or ``[N, W]`` (several, padded with -1); then a prediction
    counts when it equals any of the image's words.
    """
    words = written.reshape(written.shape[0], -1)
    has_word = (words >= 0).any(1)
    if not bool(has_word.any()):
        raise ValueError("no image carries a written class name")
    hit = (words == predictions.reshape(-1, 1)) & (words >= 0)
    return float(hit.any(1)[has_word].float().mean())


@torch.no_grad()
def zero_shot_evaluate(model: ContrastiveModel, images: ImageSet, class_embeddings: torch.Tensor | None = None,
                       batch_size: int = 256) -> ZeroShotResult:
    """Classify ``images`` among ``images.classnames`` by prompt similarity."""
    if class_embeddings is None:
        class_embeddings = class_text_embeddings(model, images.classnames)
    feats = image_embeddings(model, images, batch_size)
    logits = float(model.logit_scale) * feats @ class_embeddings.float().cpu().t()
    return ZeroShotResult(logits.argmax(1), images.labels, images.written, logits)
