"""Captioning metric: CIDEr-D (Vedantam et al., "CIDEr: Consensus-based Image Description Evaluation", CVPR 2015),
computed by the coco-caption reference implementation (``pycocoevalcap``'s ``Cider``, which is CIDEr-D: n-grams
1 to 4, TF-IDF weights with document frequencies over the reference set, clipped candidate counts, a Gaussian
length penalty with σ = 6, times 10).

Captions are tokenized here (lower-cased words, punctuation dropped) rather than by coco-caption's Java PTB
tokenizer, so no Java is needed; for the mini world's captions the two agree. IDF comes from the references of
all evaluated images, so a score needs a corpus of at least two images and depends on it: compare models on the
same set.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize_caption(text: str) -> str:
    """Lower-cased words joined by single spaces; punctuation dropped (``"A red, round Star."`` -> ``"a red round star"``)."""
    return " ".join(_TOKEN.findall(text.lower()))


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """CIDEr-D of one candidate caption per image against that image's references -> (corpus score, per-image
    scores); the corpus score is the mean of the per-image ones."""
    try:
        from pycocoevalcap.cider.cider import Cider
    except ImportError:
        raise ImportError("CIDEr-D needs pycocoevalcap: pip install --no-deps pycocoevalcap (its pycocotools "
                          "dependency is not needed for scoring; `make setup` installs it this way)") from None
    if len(candidates) != len(references):
        raise ValueError(f"got {len(candidates)} candidate captions for {len(references)} reference lists")
    if len(candidates) < 2:
        raise ValueError("CIDEr-D needs at least two images: its IDF weights come from the reference corpus")
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty:
        raise ValueError(f"image {empty[0]} has no reference caption")
    gts = {i: [tokenize_caption(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [tokenize_caption(c)] for i, c in enumerate(candidates)}
    score, scores = Cider().compute_score(gts, res)
    return float(score), [float(s) for s in scores]
