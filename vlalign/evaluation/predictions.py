"""Per-image results: what the model predicted for each image, and which images still fool it.

``predictions.jsonl`` has one object per image: ``index`` (and ``file`` for an image folder), ``label``,
``written`` (the class names written on the image, a list, empty for none), ``prediction``, ``correct``,
``follows_written`` (the prediction is one of the written words) and ``top_k`` (the k most probable classes with
their zero-shot probability). A robust evaluation adds ``attacks``: the prediction under every attack and ε.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch

from vlalign.attacks.threat_model import format_eps
from vlalign.data.image_set import ImageSet
from vlalign.evaluation.robust import UNBOUNDED, RobustEvaluation
from vlalign.io import atomic_write_text


def top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest softmax probabilities of each row of ``logits`` ``[N, K]`` and their class indices."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    probabilities = logits.double().softmax(dim=1)
    values, indices = probabilities.topk(min(k, logits.shape[1]), dim=1)
    return values, indices


def zero_shot_records(images: ImageSet, logits: torch.Tensor, k: int = 5) -> list[dict]:
    """One record per image of a zero-shot evaluation (see the module docstring)."""
    if logits.shape != (len(images), len(images.classnames)):
        raise ValueError(f"logits {tuple(logits.shape)} do not match {len(images)} images x "
                         f"{len(images.classnames)} classes")
    names = images.classnames
    probabilities, indices = top_k(logits, k)
    predictions = logits.argmax(1)
    records = []
    for i in range(len(images)):
        words = images.written_words(i)
        prediction = int(predictions[i])
        record: dict = {"index": i}
        if images.files:
            record["file"] = images.files[i]
        record.update(
            label=names[int(images.labels[i])], written=[names[w] for w in words], prediction=names[prediction],
            correct=prediction == int(images.labels[i]), follows_written=prediction in words,
            top_k=[{"class": names[int(c)], "probability": round(float(p), 6)}
                   for p, c in zip(probabilities[i], indices[i])],
        )
        records.append(record)
    return records


def robust_records(images: ImageSet, result: RobustEvaluation, k: int = 5) -> list[dict]:
    """Zero-shot records of the clean images plus, per image, the prediction under every attack and ε."""
    if result.clean_logits is None:
        raise ValueError("the robust evaluation kept no clean logits")
    records = zero_shot_records(images, result.clean_logits, k)
    for name, by_eps in result.predictions.items():
        for eps, predicted in by_eps.items():
            key = eps if eps == UNBOUNDED else format_eps(eps)
            for record, p in zip(records, predicted.tolist()):
                record.setdefault("attacks", {}).setdefault(name, {})[key] = images.classnames[p]
    return records


def write_jsonl(path, records: Sequence[dict]) -> None:
    """Write ``records`` one JSON object per line, atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
