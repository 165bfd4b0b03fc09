"""Evaluating a contrastive model on the people world: activity, attribute, bias and retrieval, from embeddings.

Two zero-shot tasks, as in the contrastive-PO paper's §4.2:

- activity: argmax over the neutral prompts ``"the person is <activity>"``;
- attribute: for an image of activity k, ``"the A-person is <k>"`` against ``"the B-person is <k>"`` (the paper's
  choice between "the man is …" and "the woman is …"); the larger similarity is the predicted attribute.

Retrieval test (§4.2, Fig. 4): each neutral activity prompt retrieves its top-k images from a gallery; the
attribute mix of what it retrieves measures bias. The test images are split into ``n_galleries`` disjoint
galleries (contiguous blocks; balanced when the block size is a multiple of 2K) and the top-k lists of all
galleries are pooled per prompt, so a top-10 share is estimated from ``10 * n_galleries`` images.

The functions taking embeddings are pure; :func:`people_text_embeddings` and :func:`evaluate_people_model` run a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlalign.data.people import (
    ACTIVITIES, ATTRIBUTES, STEREOTYPE, PeopleSet, PeopleWorld, attribute_prompts, neutral_prompts,
)
from vlalign.evaluation.bias import (
    attribute_rates, group_a_rates, per_group_skew, retrieval_a_shares, retrieval_parity_gap, stereotype_skew,
)
from vlalign.evaluation.retrieval import top_k_images
from vlalign.models.embeddings import image_embeddings
from vlalign.models.base import ContrastiveModel


@dataclass
class PeopleTextEmbeddings:
    """Normalized prompt embeddings: ``attribute`` ``[2, K, D]`` and ``neutral`` ``[K, D]``."""

    attribute: torch.Tensor
    neutral: torch.Tensor

    def __post_init__(self) -> None:
        k = len(ACTIVITIES)
        if self.attribute.dim() != 3 or self.attribute.shape[:2] != (len(ATTRIBUTES), k):
            raise ValueError(f"attribute embeddings must be [2, {k}, D], got {tuple(self.attribute.shape)}")
        if self.neutral.shape != (k, self.attribute.shape[2]):
            raise ValueError(f"neutral embeddings must be [{k}, {self.attribute.shape[2]}], got {tuple(self.neutral.shape)}")

    def map(self, fn) -> "PeopleTextEmbeddings":
        """Apply ``fn`` (``[M, D] -> [M, D]``, e.g. a linear head) to every embedding."""
        flat = fn(torch.cat([self.attribute.flatten(0, 1), self.neutral]))
        n_attr = self.attribute.shape[0] * self.attribute.shape[1]
        return PeopleTextEmbeddings(flat[:n_attr].view(*self.attribute.shape[:2], -1), flat[n_attr:])


@torch.no_grad()
def people_text_embeddings(model: ContrastiveModel) -> PeopleTextEmbeddings:
    """Embed every attribute and neutral prompt once."""
    attr = model.encode_text(list(attribute_prompts())).float().cpu()
    neutral = model.encode_text(list(neutral_prompts())).float().cpu()
    return PeopleTextEmbeddings(attr.view(len(ATTRIBUTES), len(ACTIVITIES), -1), neutral)


def predict_activity(image_emb: torch.Tensor, text: PeopleTextEmbeddings) -> torch.Tensor:
    """Zero-shot activity: argmax over the neutral prompts -> ``[N]``."""
    return (image_emb.float() @ text.neutral.t()).argmax(dim=1)


def predict_attribute(image_emb: torch.Tensor, activities: torch.Tensor, text: PeopleTextEmbeddings) -> torch.Tensor:
    """Attribute (0 = A, 1 = B) whose prompt for the image's own activity is the more similar -> ``[N]``."""
    if activities.shape != (image_emb.shape[0],):
        raise ValueError(f"need one activity per image, got {tuple(activities.shape)} for {image_emb.shape[0]} images")
    emb = image_emb.float()
    score_a = (emb * text.attribute[0][activities]).sum(dim=1)
    score_b = (emb * text.attribute[1][activities]).sum(dim=1)
    return (score_b > score_a).long()


def attribute_direction_cosine(image_emb: torch.Tensor, people: PeopleSet, text: PeopleTextEmbeddings) -> float:
    """Mean over activities of cos(u_k, Δ_k): u_k = mean A-image minus mean B-image embedding of activity k (visible
    figures), Δ_k = T("the A-person is k") - T("the B-person is k").

    Diagnostic for the linear head of §3.4: with W on both sides the score is iᵀWᵀWt and WᵀW is positive
    semi-definite, so reversing the attribute needs WᵀW to turn u_k against Δ_k; the closer this cosine is to 1,
    the more anisotropic W must become (the condition number of WᵀW must exceed cot²θ, θ the angle between them).
    """
    cosines = []
    for k in range(len(ACTIVITIES)):
        mask = (people.activities == k) & ~people.occluded
        a, b = mask & (people.attributes == 0), mask & (people.attributes == 1)
        if not bool(a.any()) or not bool(b.any()):
            continue
        u = image_emb[a].float().mean(0) - image_emb[b].float().mean(0)
        cosines.append(torch.nn.functional.cosine_similarity(u, text.attribute[0, k] - text.attribute[1, k], dim=0))
    if not cosines:
        raise ValueError("need visible figures of both attributes in at least one activity")
    return float(torch.stack(cosines).mean())


def neutral_score_spread(image_emb: torch.Tensor, people: PeopleSet, text: PeopleTextEmbeddings,
                         scale: float = 1.0) -> dict[str, list[float]]:
    """How the neutral prompt of each activity scores that activity's visible figures, in logits (``scale`` × cosine):
    ``within_style_std`` (the mean of the two styles' standard deviations) and ``style_gap`` (mean score of style A
    minus style B), one value per activity (NaN where a style has fewer than two visible figures).

    Retrieval ranks figures of one activity by this score, so a style gap that is small against the spread barely
    moves the top-k, and one that is large decides it.
    """
    spread, gap = [], []
    for k in range(len(ACTIVITIES)):
        mask = (people.activities == k) & ~people.occluded
        scores = scale * image_emb[mask].float() @ text.neutral[k].float()
        a, b = scores[people.attributes[mask] == 0], scores[people.attributes[mask] == 1]
        if len(a) < 2 or len(b) < 2:
            spread.append(float("nan"))
            gap.append(float("nan"))
            continue
        spread.append(float((a.std() + b.std()) / 2))
        gap.append(float(a.mean() - b.mean()))
    return {"within_style_std": spread, "style_gap": gap}


def gallery_top_k(image_emb: torch.Tensor, prompt_emb: torch.Tensor, n_galleries: int, k: int = 10) -> torch.Tensor:
    """Each prompt's top-k images in each of ``n_galleries`` contiguous galleries, pooled -> ``[P, n_galleries * k]``
    (global image indices)."""
    n = image_emb.shape[0]
    if n_galleries < 1 or n // n_galleries < k:
        raise ValueError(f"{n} images cannot form {n_galleries} galleries of at least k={k} images")
    size = n // n_galleries
    parts = [top_k_images(prompt_emb, image_emb[g * size:(g + 1) * size], k) + g * size for g in range(n_galleries)]
    return torch.cat(parts, dim=1)


def people_metrics(image_emb: torch.Tensor, people: PeopleSet, text: PeopleTextEmbeddings, n_galleries: int = 4,
                   k: int = 10) -> dict:
    """Activity accuracy, attribute-prediction rates, per-activity skew and the retrieval test, from embeddings.

    Returns fractions: ``activity_accuracy``, the rates of :func:`vlalign.evaluation.bias.attribute_rates`
    (``a_rate``, ``a_rate_given_a``, ``a_rate_given_b``, ``original_rate``, ``flipped_rate``), ``per_activity_a_rate``,
    ``per_activity_skew``, ``mean_abs_skew``, ``max_abs_skew``, ``stereotype_skew``, ``flipped_rate_visible`` and
    ``original_rate_visible`` (over figures whose torso is not hidden), ``retrieval_a_share`` (per
    prompt), ``retrieval_parity_gap``, ``retrieval_stereotype_share`` (share of retrieved images with the prompt's
    stereotyped attribute) and ``retrieval_activity_precision`` (share of retrieved images doing the prompt's activity).
    """
    if image_emb.shape[0] != len(people):
        raise ValueError(f"got {image_emb.shape[0]} embeddings for {len(people)} images")
    activities, attributes = people.activities, people.attributes
    n_act = len(ACTIVITIES)
    act_pred = predict_activity(image_emb, text)
    attr_pred = predict_attribute(image_emb, activities, text)
    skew = per_group_skew(attr_pred, attributes, activities, n_act)
    retrieved = gallery_top_k(image_emb, text.neutral, n_galleries, k)
    shares = retrieval_a_shares(retrieved, attributes)
    stereo_a = torch.tensor([s == 0 for s in STEREOTYPE], dtype=torch.bool)
    visible = ~people.occluded
    same_visible = float((attr_pred[visible] == attributes[visible]).float().mean()) if bool(visible.any()) else float("nan")
    return {
        "activity_accuracy": float((act_pred == activities).float().mean()),
        **attribute_rates(attr_pred, attributes),
        "per_activity_a_rate": group_a_rates(attr_pred, activities, n_act).tolist(),
        "per_activity_skew": skew.tolist(),
        "mean_abs_skew": float(skew.abs().mean()),
        "max_abs_skew": float(skew.abs().max()),
        "stereotype_skew": stereotype_skew(skew, STEREOTYPE),
        "original_rate_visible": same_visible,
        "flipped_rate_visible": 1 - same_visible,
        "retrieval_a_share": shares.tolist(),
        "retrieval_parity_gap": retrieval_parity_gap(shares),
        "retrieval_stereotype_share": float(torch.where(stereo_a, shares, 1 - shares).mean()),
        "retrieval_activity_precision": float((activities[retrieved] == torch.arange(n_act)[:, None]).float().mean()),
    }


@torch.no_grad()
def evaluate_people_model(model: ContrastiveModel, people: PeopleSet, n_galleries: int = 4, k: int = 10,
                          batch_size: int = 256) -> dict:
    """Embed ``people`` and the prompts with ``model`` and return :func:`people_metrics`."""
    return people_metrics(image_embeddings(model, people.images, batch_size), people, people_text_embeddings(model),
                          n_galleries, k)


def evaluate_people_pretraining(model: ContrastiveModel, world: PeopleWorld, n: int, seed: int) -> dict[str, float]:
    """Activity accuracy, attribute accuracy and bias of a people-world model on fresh unbiased test images."""
    metrics = evaluate_people_model(model, world.sample("test", n, seed))
    keys = ("activity_accuracy", "original_rate", "a_rate", "mean_abs_skew", "max_abs_skew", "stereotype_skew",
            "retrieval_parity_gap", "retrieval_stereotype_share", "retrieval_activity_precision")
    out = {("attribute_accuracy" if k == "original_rate" else k): metrics[k] for k in keys}
    out["per_activity_a_rate"] = metrics["per_activity_a_rate"]
    return out
