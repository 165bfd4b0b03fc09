"""Zero-shot classification: class-prompt embeddings (computed once) and batched accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vlalign.data.image_set import ImageSet
from vlalign.models.base import ContrastiveModel


@torch.no_grad()
def class_text_embeddings(model: ContrastiveModel, classnames: Sequence[str],
                          templates: Sequence[str] = ("a photo of a {}",)) -> torch.Tensor:
    """One normalized embedding per class: the mean over ``templates`` of the prompt embeddings -> ``[K, D]``."""
    if len(classnames) == 0:
        raise ValueError("class list is empty")
    if len(set(classnames)) != len(classnames):
        raise ValueError(f"class list has duplicates: {sorted({c for c in classnames if list(classnames).count(c) > 1})}")
    prompts = [t.format(c) for c in classnames for t in templates]
    emb = model.encode_text(prompts).view(len(classnames), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(emb, dim=-1)


@torch.no_grad()
def image_embeddings(model: ContrastiveModel, images: ImageSet | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Normalized image embeddings for an ImageSet, a uint8 tensor or float pixels in [0, 1], in batches."""
    n = len(images)
    device = model.device
    out = []
    for start in range(0, n, batch_size):
        if isinstance(images, ImageSet):
            batch = images.pixels(slice(start, start + batch_size))
        else:
            batch = images[start: start + batch_size]
            if batch.dtype == torch.uint8:
                batch = batch.float().div_(255.0)
        out.append(model.encode_image(batch.to(device)).float().cpu())
    if not out:
        return torch.empty(0, model.embed_dim)
    return torch.cat(out)


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
    """Share of images carrying a written class name whose prediction equals that name."""
    has_word = written >= 0
    if not bool(has_word.any()):
        raise ValueError("no image carries a written class name")
    return float((predictions[has_word] == written[has_word]).float().mean())


@torch.no_grad()
def zero_shot_evaluate(model: ContrastiveModel, images: ImageSet, class_embeddings: torch.Tensor | None = None,
                       batch_size: int = 256) -> ZeroShotResult:
    """Classify ``images`` among ``images.classnames`` by prompt similarity."""
    if class_embeddings is None:
        class_embeddings = class_text_embeddings(model, images.classnames)
    feats = image_embeddings(model, images, batch_size)
    logits = float(model.logit_scale) * feats @ class_embeddings.float().cpu().t()
    return ZeroShotResult(logits.argmax(1), images.labels, images.written, logits)
