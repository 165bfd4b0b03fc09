"""Training-free control of a linear-head model through W_t = UΣ^tVᵀ (contrastive-PO eq. 16, Fig. 2)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vlalign.data.image_set import ImageSet
from vlalign.evaluation.zero_shot import accuracy, written_label_rate
from vlalign.models.embeddings import image_embeddings
from vlalign.models.heads import HeadedCLIP


#: The most values of t one sweep takes (each costs an SVD power and a pass over the cached features).
MAX_T_VALUES = 1000
#: The largest |t|: Σ^t of a head's singular values (around 1, up to a few) overflows float32 not far beyond.
MAX_ABS_T = 100.0


def parse_range(spec: str, option: str = "t") -> list[float]:
    """``'-4:4:0.5'`` -> [-4.0, -3.5, …, 4.0] (inclusive); ``'0,0.5,1'`` -> [0.0, 0.5, 1.0].

    Every value must be finite and in [-MAX_ABS_T, MAX_ABS_T], and there may be at most :data:`MAX_T_VALUES` of
    them; errors name ``option``.
    """
    expected = f"{option}: expected START:STOP:STEP with STEP > 0 or a comma-separated list of numbers"
    try:
        parts = [float(v) for v in spec.split(":")] if ":" in spec else [float(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{expected}, got {spec!r}") from None
    if ":" in spec and len(parts) != 3:
        raise ValueError(f"{expected}, got {spec!r}")
    bad = [v for v in parts if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{option}: expected finite values, got {bad[0]} in {spec!r}")
    large = [v for v in parts if abs(v) > MAX_ABS_T]
    if large:
        raise ValueError(f"{option}: values must lie in [-{MAX_ABS_T:g}, {MAX_ABS_T:g}] (Σ^t overflows beyond), "
                         f"got {large[0]:g} in {spec!r}")
    if ":" not in spec:
        if not parts:
            raise ValueError(f"{expected}, got {spec!r}")
        if len(parts) > MAX_T_VALUES:
            raise ValueError(f"{option}: {len(parts)} values; at most {MAX_T_VALUES}")
        return parts
    start, stop, step = parts
    if step <= 0 or stop < start:
        raise ValueError(f"{expected}, got {spec!r}")
    span = (stop - start) / step
    count = int(round(span)) + 1 if span < 1e15 else math.inf
    if count > MAX_T_VALUES:
        shown = f"{count:,}" if count != math.inf else f"{span:.3g}"
        raise ValueError(f"{option} {spec} gives {shown} values; at most {MAX_T_VALUES} (use a larger STEP)")
    return [round(start + i * step, 10) for i in range(count)]


@torch.no_grad()
def sweep_head_power(model: HeadedCLIP, image_sets: dict[str, ImageSet], ts: Sequence[float],
                     template: str = "a photo of a {}") -> dict[str, list[float]]:
    """For every t: accuracy on each image set and the written-label rate on those that carry words.

    The base model's image and text features are computed once; each t costs one SVD power and a few matrix
    products. Returns ``{"t": [...], "<set>": [...], "<set>_written_label_rate": [...]}``.
    """
    if not ts:
        raise ValueError("need at least one value of t")
    base = model.base
    scale = float(base.logit_scale)
    cached = {}
    for name, images in image_sets.items():
        text = base.encode_text([template.format(c) for c in images.classnames]).float().cpu()
        cached[name] = (image_embeddings(base, images), text, images)
    out: dict[str, list[float]] = {"t": [float(t) for t in ts]}
    for t in ts:
        w = model.head.power(float(t)).float().cpu()
        for name, (features, text, images) in cached.items():
            logits = scale * F.normalize(features @ w.t(), dim=-1) @ F.normalize(text @ w.t(), dim=-1).t()
            predictions = logits.argmax(1)
            out.setdefault(name, []).append(accuracy(predictions, images.labels))
            if bool((images.written >= 0).any()):
                out.setdefault(f"{name}_written_label_rate", []).append(written_label_rate(predictions, images.written))
    return out


def monotone_violation(values: Sequence[float]) -> float:
    """How far ``values`` are from monotone: the largest step against the trend, for the trend (falling or rising)
    that makes it smallest; 0 for a monotone sequence, infinite when a value is NaN."""
    diffs = [b - a for a, b in zip(values, values[1:])]
    if any(math.isnan(d) for d in diffs):
        return math.inf
    rises, falls = max([0.0, *diffs]), max([0.0, *(-d for d in diffs)])
    return min(rises, falls)


def is_monotonic(values: Sequence[float], tolerance: float = 0.0) -> bool:
    """Whether ``values`` never rise or never fall by more than ``tolerance`` (≥ 0) between neighbours."""
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    return monotone_violation(values) <= tolerance
