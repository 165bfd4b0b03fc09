"""Image-caption retrieval evaluation of a model: clean, under attack, and with BLIP's ITM re-ranking.

Every function returns :func:`vlalign.evaluation.retrieval.retrieval_recall`'s dict (fractions)::

    {"i2t": {"r1": …, "r5": …, "r10": …}, "t2i": {…}, "mR": …}

Attacks perturb the images only (ℓp-bounded, in [0, 1] pixel space) and the captions stay clean, as in the
AdvLoRA paper. The attack objective is retrieval of the image's own captions: cross-entropy of
``s·I(x)ᵀc_j`` over the gallery's per-image caption centroids ``c_j`` (normalized mean of an image's caption
embeddings) with the image's own centroid as the label, i.e. image→text InfoNCE against every image's
captions at once; moving the image embedding also breaks text→image retrieval of that image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vlalign.attacks.base import Attack, eval_mode
from vlalign.attacks.objectives import RetrievalObjective
from vlalign.data.retrieval_set import RetrievalSet
from vlalign.evaluation.retrieval import (
    DEFAULT_KS, recall_from_ranking, recall_summary, rerank, retrieval_recall, top_k,
)
from vlalign.models.base import ContrastiveModel
from vlalign.models.embeddings import image_embeddings


@torch.no_grad()
def text_embeddings(model: ContrastiveModel, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Normalized text embeddings on the CPU, computed in consecutive batches of ``batch_size``."""
    if not texts:
        raise ValueError("no texts to embed")
    return torch.cat([model.encode_text(list(texts[s: s + batch_size])).float().cpu()
                      for s in range(0, len(texts), batch_size)])


def caption_centroids(text_emb: torch.Tensor, text_to_image: torch.Tensor, n_images: int) -> torch.Tensor:
    """Per image, the normalized mean of its captions' embeddings -> ``[n_images, D]``."""
    sums = torch.zeros(n_images, text_emb.shape[1], dtype=text_emb.dtype).index_add_(0, text_to_image.long(), text_emb)
    return F.normalize(sums, dim=-1)


class GalleryRetrievalObjective(RetrievalObjective):
    """Images ``rows`` of a gallery against every gallery image's caption centroid, the own one as the label
    (see the module docstring). It keeps the captions, so a transfer attack can rebuild it on a surrogate."""

    def __init__(self, model: ContrastiveModel, texts: Sequence[str], text_to_image: torch.Tensor, rows: torch.Tensor,
                 text_emb: torch.Tensor | None = None) -> None:
        n_images = int(text_to_image.max()) + 1
        if text_emb is None:
            text_emb = text_embeddings(model, texts)
        super().__init__(model, None, rows, text_embeddings=caption_centroids(text_emb.float(), text_to_image, n_images))
        self.gallery_texts = list(texts)
        self.text_to_image = text_to_image

    def for_model(self, model: ContrastiveModel) -> "GalleryRetrievalObjective":
        return GalleryRetrievalObjective(model, self.gallery_texts, self.text_to_image, self.labels.cpu())


def evaluate_retrieval(model: ContrastiveModel, data: RetrievalSet, ks: Sequence[int] = DEFAULT_KS,
                       batch_size: int = 256) -> dict:
    """Clean Recall@k of ``model`` on ``data`` (images against all their captions), both directions and mR."""
    with eval_mode(model):
        texts, owner = data.flat_captions()
        return retrieval_recall(image_embeddings(model, data.images, batch_size), text_embeddings(model, texts, batch_size),
                                owner, ks)


def _attacked_batches(model: ContrastiveModel, data: RetrievalSet, attack: Attack, batch_size: int, seed: int,
                      text_emb: torch.Tensor, progress: bool):
    """Yield the attacked pixels of ``data``'s images, ``batch_size`` at a time; batch b uses seed ``seed + b``."""
    texts, owner = data.flat_captions()
    starts = range(0, len(data), batch_size)
    for b, start in enumerate(tqdm(starts, desc="attack", disable=not progress)):
        rows = torch.arange(start, min(start + batch_size, len(data)))
        objective = GalleryRetrievalObjective(model, texts, owner, rows, text_emb)
        yield attack(objective, data.pixels(rows).to(model.device), seed=seed + b).adversarial.detach()


def adversarial_image_embeddings(model: ContrastiveModel, data: RetrievalSet, attack: Attack, batch_size: int = 64,
                                 seed: int = 0, text_emb: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
    """Embeddings of ``data``'s images after ``attack`` (see the module docstring for its objective) -> ``[N, D]``.

    Batches are attacked one at a time and only their embeddings are kept, so a large gallery never holds
    its adversarial pixels at once. Batch b is attacked with seed ``seed + b``.
    """
    if text_emb is None:
        text_emb = text_embeddings(model, data.flat_captions()[0])
    out = []
    for adversarial in _attacked_batches(model, data, attack, batch_size, seed, text_emb, progress):
        with torch.no_grad():
            out.append(model.encode_image(adversarial).float().cpu())
    return torch.cat(out)


def adversarial_pixels(model: ContrastiveModel, data: RetrievalSet, attack: Attack, batch_size: int = 64,
                       seed: int = 0, progress: bool = False) -> torch.Tensor:
    """``data``'s images after ``attack`` on ``model`` (float ``[N, 3, H, W]`` in [0, 1], on the CPU), batched and
    seeded as :func:`adversarial_image_embeddings`. For a transfer attack crafted once on a surrogate and then
    scored on many targets with :func:`recall_of_pixels` (what :class:`vlalign.attacks.TransferAttack` does per
    target, without crafting the same images again for each)."""
    with eval_mode(model):
        text_emb = text_embeddings(model, data.flat_captions()[0])
        return torch.cat([x.cpu() for x in _attacked_batches(model, data, attack, batch_size, seed, text_emb, progress)])


def recall_of_pixels(model: ContrastiveModel, pixels: torch.Tensor, data: RetrievalSet, ks: Sequence[int] = DEFAULT_KS,
                     batch_size: int = 256) -> dict:
    """Recall@k of ``model`` with ``pixels`` (float ``[N, 3, H, W]`` in [0, 1], e.g. from
    :func:`adversarial_pixels`) in place of ``data``'s images and ``data``'s clean captions."""
    if pixels.shape[0] != len(data):
        raise ValueError(f"got {pixels.shape[0]} images for a gallery of {len(data)}")
    with eval_mode(model):
        texts, owner = data.flat_captions()
        with torch.no_grad():
            images = torch.cat([model.encode_image(pixels[s: s + batch_size].to(model.device)).float().cpu()
                                for s in range(0, len(pixels), batch_size)])
        return retrieval_recall(images, text_embeddings(model, texts, batch_size), owner, ks)


def robust_retrieval(model: ContrastiveModel, data: RetrievalSet, attack: Attack, ks: Sequence[int] = DEFAULT_KS,
                     batch_size: int = 64, seed: int = 0, progress: bool = False) -> dict:
    """Recall@k with every image attacked by ``attack`` and the captions clean (both directions and mR)."""
    with eval_mode(model):
        texts, owner = data.flat_captions()
        text_emb = text_embeddings(model, texts)
        adversarial = adversarial_image_embeddings(model, data, attack, batch_size, seed, text_emb, progress)
        return retrieval_recall(adversarial, text_emb, owner, ks)


def has_itm_head(model: ContrastiveModel) -> bool:
    """Whether ``model`` can re-rank with an image-text matching head (:func:`itm_reranked_recall`'s needs)."""
    return hasattr(model, "image_states") and hasattr(model, "itm_scores_from_states")


@torch.no_grad()
def itm_reranked_recall(model: ContrastiveModel, data: RetrievalSet, k: int = 16, ks: Sequence[int] = DEFAULT_KS,
                        batch_size: int = 64) -> dict:
    """Recall@k after re-ranking each query's ITC top-``k`` with the model's image-text matching head, as BLIP
    evaluates retrieval: candidate score = ITM "match" logit + ITC cosine similarity; items outside the top-k
    keep their ITC order after it (so ``k`` must be at least the largest of ``ks``).

    The model needs ``image_states(pixels)`` and ``itm_scores_from_states(states, tokens)`` (e.g.
    :class:`vlalign.models.hf_blip.HFBlip`). The vision states of all images are computed once and kept on the
    CPU (N x tokens x width floats).
    """
    if not has_itm_head(model):
        raise TypeError(f"{type(model).__name__} has no image-text matching head to re-rank with")
    if k < max(ks):
        raise ValueError(f"re-ranking depth k={k} must be at least the largest recall k ({max(ks)})")
    with eval_mode(model):
        device = model.device
        texts, owner = data.flat_captions()
        image_emb = image_embeddings(model, data.images, batch_size)
        text_emb = text_embeddings(model, texts, batch_size)
        states = torch.cat([model.image_states(data.pixels(slice(s, s + batch_size)).to(device)).cpu()
                            for s in range(0, len(data), batch_size)])
        tokens = {key: value for key, value in model.tokenize(texts).items()}

        def score(image_rows: torch.Tensor, text_rows: torch.Tensor) -> torch.Tensor:
            out = []
            for s in range(0, len(image_rows), batch_size):
                i, t = image_rows[s: s + batch_size], text_rows[s: s + batch_size]
                batch_tokens = {key: value[t].to(device) for key, value in tokens.items()}
                out.append(model.itm_scores_from_states(states[i].to(device), batch_tokens).float().cpu())
            return torch.cat(out)

        itc, candidates = top_k(image_emb, text_emb, min(k, len(texts)))
        itm = score(torch.arange(len(data)).repeat_interleave(candidates.shape[1]), candidates.flatten())
        ranked = rerank(candidates, itm.view_as(itc) + itc)
        i2t = recall_from_ranking(ranked, owner[ranked] == torch.arange(len(data))[:, None], ks)

        itc, candidates = top_k(text_emb, image_emb, min(k, len(data)))
        itm = score(candidates.flatten(), torch.arange(len(texts)).repeat_interleave(candidates.shape[1]))
        ranked = rerank(candidates, itm.view_as(itc) + itc)
        t2i = recall_from_ranking(ranked, ranked == owner[:, None], ks)
        return recall_summary(i2t, t2i)
