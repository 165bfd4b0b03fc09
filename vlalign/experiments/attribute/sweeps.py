"""Σ^t sweeps of trained heads and the counterfactual reference paths (ideal eraser, best linear map)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from vlalign.data.people import PeopleSet
from vlalign.evaluation.bias import neutral_point
from vlalign.evaluation.erasure import (
    apply_map, explained_change, fit_counterfactual_map, interpolate_map, twin_mixture, window_below,
)
from vlalign.evaluation.people import PeopleTextEmbeddings, people_metrics
from vlalign.experiments.attribute.config import BOUNDS_POINTS, BOUNDS_RIDGE, TARGETS, AttributeExperimentConfig
from vlalign.models.heads import HeadedCLIP, LinearHead


def power_head(model: HeadedCLIP, t: float) -> LinearHead:
    return LinearHead(model.embed_dim, model.head.power(t).detach().cpu())


#: A path of models, as a function from t to (image embeddings, prompt embeddings) of the test set.
EmbeddingPath = Callable[[float], tuple[torch.Tensor, PeopleTextEmbeddings]]


def sweep_path(embed_at: EmbeddingPath, grid: list[float], people: PeopleSet, config: AttributeExperimentConfig) -> dict:
    """People metrics along a path of models at each t of ``grid``; the neutral point of
    :func:`vlalign.evaluation.bias.neutral_point` (t*, the A rate there and the parity gap averaged over
    t* ± ``config.neutral_half_width``); the metrics at t = 1 (``flipped``) and of the one model at t*
    (``neutralized``, for the per-prompt figures; its gap is ``parity_gap_at_t_star``, a point value on a
    steep curve, reported beside the window mean, not instead of it)."""
    def metrics(t: float) -> dict:
        with torch.no_grad():
            image_emb, text = embed_at(t)
            return people_metrics(image_emb, people, text, config.n_galleries, config.top_k)

    rows = [metrics(t) for t in grid]
    curves = {key: [r[key] for r in rows] for key in
              ("a_rate", "a_rate_given_a", "a_rate_given_b", "original_rate", "flipped_rate", "activity_accuracy",
               "mean_abs_skew", "retrieval_parity_gap", "retrieval_stereotype_share")}
    point = neutral_point(grid, curves["a_rate_given_a"], curves["a_rate_given_b"], curves["a_rate"],
                          curves["retrieval_parity_gap"], config.neutral_half_width)
    t_star = None if point is None else point["t_star"]
    neutralized = metrics(t_star) if t_star is not None else None
    return {
        "t": grid, **curves, "t_star": t_star,
        "attribute_a_rate_at_t_star": None if point is None else point["a_rate_at_t_star"],
        "neutralized_parity_gap": None if point is None else point["parity_gap"],
        "parity_gap_at_t_star": None if neutralized is None else neutralized["retrieval_parity_gap"],
        "neutral_window": None if point is None else point["window"],
        "flipped": rows[-1], "neutralized": neutralized,
    }


def _lowest_gap(sweep: dict) -> float:
    """The smallest retrieval parity gap on the grid or at t*."""
    gaps = list(sweep["retrieval_parity_gap"])
    if sweep["neutralized"] is not None:
        gaps.append(sweep["neutralized"]["retrieval_parity_gap"])
    return min(gaps)


def sweep_head(model: HeadedCLIP, image_emb: torch.Tensor, text: PeopleTextEmbeddings, people: PeopleSet,
               config: AttributeExperimentConfig) -> dict:
    """:func:`sweep_path` of W_t = U Σ^t Vᵀ on a uniform grid over [0, 1], with the head's spectrum."""
    def embed_at(t: float) -> tuple[torch.Tensor, PeopleTextEmbeddings]:
        head = power_head(model, t)
        return head(image_emb), text.map(head)

    grid = [i / (config.t_points - 1) for i in range(config.t_points)]
    singular = model.head.singular_values()
    return {**sweep_path(embed_at, grid, people, config),
            "head": {"orthogonality_error": model.head.orthogonality_error(), "sigma_min": float(singular.min()),
                     "sigma_max": float(singular.max())}}


def erasure_bounds(image_emb: torch.Tensor, twin_emb: torch.Tensor, fit_emb: torch.Tensor, fit_twin_emb: torch.Tensor,
                   text: PeopleTextEmbeddings, people: PeopleSet, config: AttributeExperimentConfig,
                   gap_max: float) -> dict:
    """Reference paths from counterfactual twins (:mod:`vlalign.evaluation.erasure`), on a grid of step 0.01:

    - ``ideal_eraser``: every test image moved towards its twin; at 1/2 the attribute is gone from the image;
    - ``linear_map``: I + t (W − I), W the least-squares linear map from the ``fit`` images to their twins
      (training images, not the test set), applied to image embeddings.

    ``parity_window`` is the range of t whose parity gap is at most ``gap_max`` (the target).
    """
    grid = [i / BOUNDS_POINTS for i in range(BOUNDS_POINTS + 1)]
    weight = fit_counterfactual_map(fit_emb, fit_twin_emb, BOUNDS_RIDGE)
    paths = {
        "ideal_eraser": lambda w: (twin_mixture(image_emb, twin_emb, w), text),
        "linear_map": lambda t: (apply_map(image_emb, interpolate_map(weight, t)), text),
    }
    out = {}
    for name, path in paths.items():
        sweep = sweep_path(path, grid, people, config)
        neutral = sweep["neutralized"]
        out[name] = {
            "t": grid, "retrieval_parity_gap_by_t": sweep["retrieval_parity_gap"],
            "t_star": sweep["t_star"], "attribute_a_rate_at_t_star": sweep["attribute_a_rate_at_t_star"],
            "retrieval_parity_gap_neutralized": sweep["neutralized_parity_gap"],
            "neutral_window": sweep["neutral_window"],
            "retrieval_parity_gap_at_t_star": sweep["parity_gap_at_t_star"],
            "activity_accuracy_at_t_star": None if neutral is None else neutral["activity_accuracy"],
            "min_retrieval_parity_gap": _lowest_gap(sweep),
            "parity_window": window_below(grid, sweep["retrieval_parity_gap"], gap_max),
            "flipped_rate": sweep["flipped"]["flipped_rate"],
        }
    out["linear_map"]["explained_change"] = explained_change(image_emb, twin_emb, weight)
    out["linear_map"]["ridge"] = BOUNDS_RIDGE
    return out


def parity_gap_max(pretrained_gap: float) -> float:
    """The neutralized parity-gap target: a fraction (``TARGETS``) of the pretrained model's gap."""
    return TARGETS["parity_gap_max_fraction"] * pretrained_gap


def summarize_sweep(pretrained: dict, sweep: dict) -> dict:
    """The headline figures and curves of one method's Σ^t sweep (metrics.json's per-method keys).

    ``retrieval_parity_gap.neutralized`` is the gap averaged over ``neutral_window`` = t* ± the half width (the
    headline); ``retrieval_parity_gap_at_t_star`` is the same curve read at t* alone.
    """
    neutral = sweep["neutralized"]
    return {
        "t": sweep["t"],
        "attribute_a_rate": sweep["a_rate"],
        "attribute_a_rate_given_a": sweep["a_rate_given_a"],
        "attribute_a_rate_given_b": sweep["a_rate_given_b"],
        "flipped_rate_by_t": sweep["flipped_rate"],
        "retrieval_parity_gap_by_t": sweep["retrieval_parity_gap"],
        "retrieval_stereotype_share_by_t": sweep["retrieval_stereotype_share"],
        "activity_accuracy": sweep["activity_accuracy"],
        "t_star": sweep["t_star"],
        "neutral_window": sweep["neutral_window"],
        "attribute_a_rate_at_t_star": sweep["attribute_a_rate_at_t_star"],
        "flipped_rate": sweep["flipped"]["flipped_rate"],
        "flipped_rate_visible": sweep["flipped"]["flipped_rate_visible"],
        "activity_accuracy_pretrained": pretrained["activity_accuracy"],
        "max_activity_drop": max(pretrained["activity_accuracy"] - a for a in sweep["activity_accuracy"]),
        "min_retrieval_parity_gap": _lowest_gap(sweep),
        "retrieval_parity_gap": {"original": pretrained["retrieval_parity_gap"],
                                 "flipped": sweep["flipped"]["retrieval_parity_gap"],
                                 "neutralized": sweep["neutralized_parity_gap"]},
        "retrieval_parity_gap_at_t_star": sweep["parity_gap_at_t_star"],
        "retrieval_parity_gap_max": parity_gap_max(pretrained["retrieval_parity_gap"]),
        "retrieval_a_share": {"original": pretrained["retrieval_a_share"],
                              "flipped": sweep["flipped"]["retrieval_a_share"],
                              "neutralized": None if neutral is None else neutral["retrieval_a_share"]},
        "per_activity_skew": {"original": pretrained["per_activity_skew"],
                              "flipped": sweep["flipped"]["per_activity_skew"],
                              "neutralized": None if neutral is None else neutral["per_activity_skew"]},
        "stereotype_skew": {"original": pretrained["stereotype_skew"], "flipped": sweep["flipped"]["stereotype_skew"],
                            "neutralized": None if neutral is None else neutral["stereotype_skew"]},
        "head": sweep["head"],
    }


#: The names under which :func:`target_checks` reports each target.
TARGET_NAMES = {
    "flipped": f"flipped rate >= {TARGETS['flipped_rate_min']:.2f}",
    "parity": f"neutralized parity gap <= {TARGETS['parity_gap_max_fraction']:g} x pretrained",
    "activity": f"activity accuracy within {100 * TARGETS['activity_drop_max']:.0f} points at every t",
}


def target_checks(summary: dict) -> dict[str, bool]:
    """Whether one method's summary (one seed) meets each target of the issue, keyed by :data:`TARGET_NAMES`."""
    gap = summary["retrieval_parity_gap"]["neutralized"]
    return {
        TARGET_NAMES["flipped"]: summary["flipped_rate"] >= TARGETS["flipped_rate_min"],
        TARGET_NAMES["parity"]: gap is not None and gap <= parity_gap_max(summary["retrieval_parity_gap"]["original"]),
        TARGET_NAMES["activity"]: summary["max_activity_drop"] <= TARGETS["activity_drop_max"],
    }
