"""Disentangling an attribute (contrastive-PO §4.2, Figs. 3-4) on the people world.

1. Preference data from unbiased people images: for an image of style s doing activity k, the preferred text is
   "the <other style>-person is <k>", the dispreferred one "the <s>-person is <k>"; the regularization set keeps
   the policy over the neutral prompts "the person is <k>" (activity recognition) near the reference.
2. A linear head W on both embeddings is trained with DPO (and IPO, KTO), features frozen and cached.
3. W_t = U Σ^t Vᵀ is swept over t in [0, 1]: t = 0 is the pretrained model, t = 1 the flipped one. Per t:
   attribute-prediction rates and activity accuracy. t* is where P(pred A | A images) and P(pred A | B images)
   cross: the predicted attribute no longer depends on the true one (the attribute is neutralized), and there the
   overall share of A predictions should be 50%.
4. Retrieval test for the original (t = 0), flipped (t = 1) and neutralized (t = t*) models: each neutral
   activity prompt retrieves its top-10 images from each of several galleries; bias is the attribute mix.
5. Reference paths from counterfactual twins (each test image re-rendered with the other style): an ideal eraser
   that moves each image towards its twin, and the least-squares linear map from images to twins. They show how
   exactly the style must be erased for the retrieval test to read neutral, and how close a linear map gets.

Every metric is computed from embeddings: the image and prompt embeddings of the base model are computed once,
and each W_t is applied to them (exactly what HeadedCLIP.with_power(t) computes image by image).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlalign.data.people import ACTIVITIES, ATTRIBUTES, STEREOTYPE, PeopleSet, PeopleWorld, flip_preference_data
from vlalign.evaluation.bias import crossing_point, value_at
from vlalign.evaluation.erasure import (
    apply_map, explained_change, fit_counterfactual_map, interpolate_map, twin_mixture, window_below,
)
from vlalign.evaluation.people import (
    PeopleTextEmbeddings, attribute_direction_cosine, gallery_top_k, neutral_score_spread, people_metrics,
    people_text_embeddings,
)
from vlalign.evaluation.zero_shot import image_embeddings
from vlalign.models.base import ContrastiveModel
from vlalign.models.checkpoint import atomic_write_bytes, atomic_write_json
from vlalign.models.heads import HeadedCLIP, LinearHead
from vlalign.reporting.bias_plots import (
    attribute_sweep_figure, parity_gap_figure, retrieval_mix_figure, retrieval_strip,
)
from vlalign.reporting.tables import markdown_table, percent
from vlalign.training.contrastive_po import PreferenceTrainConfig, save_aligned_model, train_preference

#: Targets of the issue; the report checks each.
TARGETS = {"flipped_rate_min": 0.90, "t_star_rate_tolerance": 0.05, "parity_gap_max": 0.10, "activity_drop_max": 0.02}

#: The reference paths of :func:`erasure_bounds` are sampled every 1 / BOUNDS_POINTS; W's ridge towards I.
BOUNDS_POINTS = 100
BOUNDS_RIDGE = 1.0
BOUND_NAMES = {"ideal_eraser": "ideal eraser: (1 − t) image + t twin",
               "linear_map": "best linear map to the twins: I + t(W − I)"}


#: (β, λ) per method for flipping the people MiniCLIP's attribute, chosen by a small grid (β 0.02-1, λ 0.1-10,
#: 600-6000 steps) scored on 1600 `test` images of seed 0 — the first 1600 of the default run's test set, so a
#: held-out check is `--seed 1`. The paper's gender setting, β = λ = 1, barely moves this model:
#: its reference margins between the two attribute prompts are ~8 nats, and DPO saturates after a few nats of
#: improvement at β = 1, so a smaller β is needed to reverse them; IPO needs a strong λ to keep activity accuracy.
METHOD_PARAMS: dict[str, tuple[float, float]] = {"dpo": (0.1, 1.0), "ipo": (0.02, 10.0), "kto": (0.1, 0.3)}


@dataclass
class AttributeExperimentConfig:
    """Sizes and training settings of the attribute experiment (``quick`` shrinks them for smoke runs).

    ``method_params`` gives (β, λ) per method; a method missing from it uses the trainer's defaults.
    """

    methods: list[str] = field(default_factory=lambda: ["dpo", "ipo", "kto"])
    method_params: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(METHOD_PARAMS))
    n_pref: int = 2048
    n_reg: int = 2048
    n_test: int = 4096
    n_galleries: int = 16
    top_k: int = 10
    t_points: int = 21
    steps: int = 3000
    batch_size: int = 128
    lr: float = 0.01
    averaging: str = "none"
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("methods is empty")
        block = 2 * len(ACTIVITIES) * self.n_galleries
        if self.n_test < block or self.n_test % block:
            raise ValueError(f"n_test must be a positive multiple of 2 * {len(ACTIVITIES)} activities * n_galleries = "
                             f"{block}, so that every gallery is balanced; got {self.n_test}")
        if self.n_test // self.n_galleries < self.top_k:
            raise ValueError(f"galleries of {self.n_test // self.n_galleries} images are smaller than top_k={self.top_k}")
        if self.t_points < 2:
            raise ValueError(f"t_points must be >= 2, got {self.t_points}")
        if self.n_pref < 1 or self.n_reg < 1:
            raise ValueError(f"n_pref and n_reg must be >= 1, got {self.n_pref}, {self.n_reg}")

    @classmethod
    def quick(cls, seed: int = 0) -> "AttributeExperimentConfig":
        """A smoke-test size: DPO only, trained as in the full run, evaluated on fewer images and t values."""
        return cls(methods=["dpo"], n_test=1024, n_galleries=4, t_points=11, seed=seed)

    def train_config(self, method: str) -> PreferenceTrainConfig:
        """Head-mode preference training for ``method`` with this experiment's (β, λ) for it."""
        beta, lam = self.method_params.get(method, (None, None))
        return PreferenceTrainConfig(method=method, trainable="head", beta=beta, lam=lam, lr=self.lr,
                                     averaging=self.averaging, steps=self.steps, batch_size=self.batch_size,
                                     seed=self.seed, device=self.device)


def _power_head(model: HeadedCLIP, t: float) -> LinearHead:
    return LinearHead(model.embed_dim, model.head.power(t).detach().cpu())


#: A path of models, as a function from t to (image embeddings, prompt embeddings) of the test set.
EmbeddingPath = Callable[[float], tuple[torch.Tensor, PeopleTextEmbeddings]]


def sweep_path(embed_at: EmbeddingPath, grid: list[float], people: PeopleSet, config: AttributeExperimentConfig) -> dict:
    """People metrics along a path of models at each t of ``grid``, the crossing t* of P(pred A | A) and
    P(pred A | B), and the metrics at t = 1 (``flipped``) and at t* (``neutralized``)."""
    def metrics(t: float) -> dict:
        with torch.no_grad():
            image_emb, text = embed_at(t)
            return people_metrics(image_emb, people, text, config.n_galleries, config.top_k)

    rows = [metrics(t) for t in grid]
    curves = {key: [r[key] for r in rows] for key in
              ("a_rate", "a_rate_given_a", "a_rate_given_b", "original_rate", "flipped_rate", "activity_accuracy",
               "mean_abs_skew", "retrieval_parity_gap", "retrieval_stereotype_share")}
    t_star = crossing_point(grid, curves["a_rate_given_a"], curves["a_rate_given_b"])
    return {
        "t": grid, **curves, "t_star": t_star,
        "attribute_a_rate_at_t_star": value_at(grid, curves["a_rate"], t_star) if t_star is not None else None,
        "flipped": rows[-1], "neutralized": metrics(t_star) if t_star is not None else None,
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
        head = _power_head(model, t)
        return head(image_emb), text.map(head)

    grid = [i / (config.t_points - 1) for i in range(config.t_points)]
    singular = model.head.singular_values()
    return {**sweep_path(embed_at, grid, people, config),
            "head": {"orthogonality_error": model.head.orthogonality_error(), "sigma_min": float(singular.min()),
                     "sigma_max": float(singular.max())}}


def erasure_bounds(image_emb: torch.Tensor, twin_emb: torch.Tensor, fit_emb: torch.Tensor, fit_twin_emb: torch.Tensor,
                   text: PeopleTextEmbeddings, people: PeopleSet, config: AttributeExperimentConfig) -> dict:
    """Reference paths from counterfactual twins (:mod:`vlalign.evaluation.erasure`), on a grid of step 0.01:

    - ``ideal_eraser``: every test image moved towards its twin; at 1/2 the attribute is gone from the image;
    - ``linear_map``: I + t (W − I), W the least-squares linear map from the ``fit`` images to their twins
      (training images, not the test set), applied to image embeddings.
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
            "retrieval_parity_gap_at_t_star": None if neutral is None else neutral["retrieval_parity_gap"],
            "activity_accuracy_at_t_star": None if neutral is None else neutral["activity_accuracy"],
            "min_retrieval_parity_gap": _lowest_gap(sweep),
            "parity_window": window_below(grid, sweep["retrieval_parity_gap"], TARGETS["parity_gap_max"]),
            "flipped_rate": sweep["flipped"]["flipped_rate"],
        }
    out["linear_map"]["explained_change"] = explained_change(image_emb, twin_emb, weight)
    out["linear_map"]["ridge"] = BOUNDS_RIDGE
    return out


def _summary(pretrained: dict, sweep: dict) -> dict:
    """The issue's metrics.json keys for one method."""
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
        "attribute_a_rate_at_t_star": sweep["attribute_a_rate_at_t_star"],
        "flipped_rate": sweep["flipped"]["flipped_rate"],
        "flipped_rate_visible": sweep["flipped"]["flipped_rate_visible"],
        "activity_accuracy_pretrained": pretrained["activity_accuracy"],
        "max_activity_drop": max(pretrained["activity_accuracy"] - a for a in sweep["activity_accuracy"]),
        "min_retrieval_parity_gap": _lowest_gap(sweep),
        "retrieval_parity_gap": {"original": pretrained["retrieval_parity_gap"],
                                 "flipped": sweep["flipped"]["retrieval_parity_gap"],
                                 "neutralized": None if neutral is None else neutral["retrieval_parity_gap"]},
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


def target_checks(summary: dict) -> dict[str, bool]:
    """Whether one method's summary meets each target of the issue."""
    rate = summary["attribute_a_rate_at_t_star"]
    gap = summary["retrieval_parity_gap"]["neutralized"]
    return {
        "flipped_rate >= 0.90": summary["flipped_rate"] >= TARGETS["flipped_rate_min"],
        "attribute A rate at t* within 0.50 ± 0.05": rate is not None and abs(rate - 0.5) <= TARGETS["t_star_rate_tolerance"],
        "retrieval parity gap at t* <= 0.10": gap is not None and gap <= TARGETS["parity_gap_max"],
        "activity accuracy within 2 points of pretrained at every t": summary["max_activity_drop"] <= TARGETS["activity_drop_max"],
    }


def attribute_experiment(model: ContrastiveModel, config: AttributeExperimentConfig, out: str | Path,
                         model_spec: str | None = None, progress: bool = False) -> dict:
    """Run the experiment on ``model`` (any ContrastiveModel); write metrics.json, report.md and figures to ``out``.

    With ``model_spec`` (how to load ``model`` again), each trained head is also saved as ``<method>/`` in the
    format of ``vlalign train`` (``head.safetensors`` + ``run.json``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = model.to(config.device).eval()
    world = PeopleWorld()
    train = world.sample("train", config.n_pref + config.n_reg, config.seed)
    test = world.sample("test", config.n_test, config.seed)
    pref, reg = flip_preference_data(train, config.n_pref)
    image_emb = image_embeddings(model, test.images)
    text = people_text_embeddings(model)
    pretrained = people_metrics(image_emb, test, text, config.n_galleries, config.top_k)
    # Counterfactual twins (same scenes, other style) of the test images and of the preference images.
    test_twins = world.sample("test", config.n_test, config.seed, swap_attribute=True)
    fit_twins = world.sample("train", config.n_pref, config.seed, swap_attribute=True)
    bounds = erasure_bounds(image_emb, image_embeddings(model, test_twins.images),
                            image_embeddings(model, pref.images), image_embeddings(model, fit_twins.images),
                            text, test, config)

    methods: dict[str, dict] = {}
    sweeps: dict[str, dict] = {}
    heads: dict[str, HeadedCLIP] = {}
    for method in config.methods:
        result = train_preference(model, pref, reg, config.train_config(method), progress=progress)
        aligned = result.model
        if not isinstance(aligned, HeadedCLIP):
            raise TypeError(f"head-mode training returned {type(aligned).__name__}, expected HeadedCLIP")
        aligned.head.cpu()
        heads[method] = aligned
        if model_spec is not None:
            save_aligned_model(result, out / method, model_spec)
        sweeps[method] = sweep_head(aligned, image_emb, text, test, config)
        methods[method] = _summary(pretrained, sweeps[method])
        methods[method]["targets_met"] = target_checks(methods[method])

    primary = config.methods[0]
    metrics = {
        "method": primary,
        **methods[primary],
        "pretrained": {k: pretrained[k] for k in ("activity_accuracy", "original_rate", "a_rate", "mean_abs_skew",
                                                  "max_abs_skew", "stereotype_skew", "per_activity_a_rate",
                                                  "retrieval_parity_gap", "retrieval_stereotype_share")},
        "attribute_direction_cosine": attribute_direction_cosine(image_emb, test, text),
        "methods": methods,
        "bounds": bounds,
        "flipped_rate_ceiling": 1.0 - float(test.occluded.float().mean()) / 2,
        "neutral_score_spread": neutral_score_spread(image_emb, test, text, float(model.logit_scale.detach())),
        "config": dataclasses.asdict(config),
        "seconds": None,
    }
    figures = _figures(out, test, image_emb, text, sweeps, pretrained, heads[primary], primary, config, bounds)
    metrics["figures"] = figures
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_bytes(out / "report.md", _report(metrics, figures, model_spec).encode())
    return metrics


def _figures(out: Path, test: PeopleSet, image_emb: torch.Tensor, text: PeopleTextEmbeddings, sweeps: dict[str, dict],
             pretrained: dict, primary_model: HeadedCLIP, primary: str, config: AttributeExperimentConfig,
             bounds: dict) -> dict[str, str]:
    panels = {m.upper(): s for m, s in sweeps.items()}
    fig3 = attribute_sweep_figure(panels, out / "fig3_attribute_sweep.png")
    sweep = sweeps[primary]
    shares = {"original (t = 0)": pretrained["retrieval_a_share"], "flipped (t = 1)": sweep["flipped"]["retrieval_a_share"]}
    if sweep["neutralized"] is not None:
        shares[f"neutralized (t* = {sweep['t_star']:.2f})"] = sweep["neutralized"]["retrieval_a_share"]
    fig4 = retrieval_mix_figure(ACTIVITIES, shares, out / "fig4_retrieval_mix.png", STEREOTYPE, config.top_k)
    # Fig. 4's image rows: the prompt whose original retrievals are furthest from parity, first gallery.
    worst = int(torch.tensor(pretrained["retrieval_a_share"]).sub(0.5).abs().argmax())
    gallery = config.n_test // config.n_galleries
    models = {"original": None, "flipped": 1.0}
    if sweep["t_star"] is not None:
        models["neutralized"] = sweep["t_star"]
    rows = {}
    for name, t in models.items():
        head = None if t is None else _power_head(primary_model, t)
        with torch.no_grad():
            img = image_emb[:gallery] if head is None else head(image_emb[:gallery])
            prompt = text.neutral[worst:worst + 1] if head is None else head(text.neutral[worst:worst + 1])
        top = gallery_top_k(img, prompt, 1, config.top_k)[0]
        n_a = int((test.attributes[top] == 0).sum())
        rows[f"{name}\n({n_a} A, {config.top_k - n_a} B)"] = (
            test.images.images[top], [ATTRIBUTES[int(a)] for a in test.attributes[top]])
    strip = retrieval_strip(rows, out / "fig4_retrieved_images.png",
                            f'Top-{config.top_k} images for "the person is {ACTIVITIES[worst]}" ({primary.upper()} head)')
    curves = {f"{m.upper()} head: U Σ^t Vᵀ": (sw["t"], sw["retrieval_parity_gap"], sw["t_star"]) for m, sw in sweeps.items()}
    curves.update({BOUND_NAMES[name]: (b["t"], b["retrieval_parity_gap_by_t"], b["t_star"]) for name, b in bounds.items()})
    parity = parity_gap_figure(curves, TARGETS["parity_gap_max"], out / "fig_parity_paths.png")
    return {"fig3": fig3.name, "fig4": fig4.name, "strip": strip.name, "parity": parity.name}


def _fmt(value: float | None) -> str:
    return "—" if value is None else percent(value)


def _fmt_t(t: float | None) -> str:
    return "—" if t is None else f"{t:.2f}"


def _window(window: list[float] | tuple[float, float] | None) -> str:
    return "none" if window is None else f"{window[0]:.2f} – {window[1]:.2f}"


def _bounds_section(metrics: dict) -> list[str]:
    """The report's comparison of the trained heads with the counterfactual reference paths."""
    bounds, gap_max = metrics["bounds"], TARGETS["parity_gap_max"]
    rows = []
    for method, s in metrics["methods"].items():
        window = window_below(s["t"], s["retrieval_parity_gap_by_t"], gap_max)
        rows.append([f"{method.upper()} head (Σ^t)", _fmt_t(s["t_star"]),
                     _fmt(s["attribute_a_rate_at_t_star"]), _fmt(s["retrieval_parity_gap"]["neutralized"]),
                     _fmt(s["min_retrieval_parity_gap"]), _window(window)])
    for name, b in bounds.items():
        rows.append([BOUND_NAMES[name], _fmt_t(b["t_star"]),
                     _fmt(b["attribute_a_rate_at_t_star"]), _fmt(b["retrieval_parity_gap_at_t_star"]),
                     _fmt(b["min_retrieval_parity_gap"]), _window(b["parity_window"])])
    ideal, linear = bounds["ideal_eraser"], bounds["linear_map"]
    spread = [v for v in metrics["neutral_score_spread"]["within_style_std"] if not math.isnan(v)] or [float("nan")]
    gaps = [abs(v) for v in metrics["neutral_score_spread"]["style_gap"] if not math.isnan(v)] or [float("nan")]
    spread_lo, spread_hi, gap_lo, gap_hi = min(spread), max(spread), min(gaps), max(gaps)
    lines = ["", "## How far can a linear map neutralize here? (counterfactual twins)", "",
             "Each test image has a *twin*: the same scene rendered with the other style. Two reference paths use them: "
             "the ideal eraser moves every image embedding towards its twin's (at 1/2 the style is gone from the "
             "image, for every prompt), and the best linear map is the least-squares W sending training images to "
             f"their twins (ridge {linear['ridge']} towards I), swept as I + t(W − I) on the image side.",
             "", f"![parity along each path]({metrics['figures']['parity']})", "",
             markdown_table(["path", "t*", "A rate at t*", "parity gap at t*", "lowest gap on the path",
                             f"t with gap ≤ {100 * gap_max:.0f}%"], rows), "",
             f"- The retrieval test can read \"neutral\": the ideal eraser reaches a gap of {_fmt(ideal['retrieval_parity_gap_at_t_star'])} "
             f"at t* = {_fmt_t(ideal['t_star'])} with activity accuracy {_fmt(ideal['activity_accuracy_at_t_star'])}. "
             f"But only for t in {_window(ideal['parity_window'])} (grid step 0.01). Within one activity the neutral "
             f"prompt's scores vary little (standard deviation {spread_lo:.1f}–{spread_hi:.1f} logits per style) against "
             f"the {gap_lo:.1f}–{gap_hi:.1f}-logit gap between the styles, so a small leftover of the style decides the top-10.",
             f"- The best linear map reproduces {_fmt(linear['explained_change'])} of the style change "
             f"(1 − residual / change, on test twins). Along its path the gap never falls below "
             f"{_fmt(linear['min_retrieval_parity_gap'])}, and it is {_fmt(linear['retrieval_parity_gap_at_t_star'])} at its t*.",
             f"- Flipped-rate ceiling: {_fmt(metrics['flipped_rate_ceiling'])} of test images can flip at most. A figure "
             "whose torso is hidden looks the same in either style, so only about half of those images can flip."]
    return lines


def _report(metrics: dict, figures: dict[str, str], model_spec: str | None) -> str:
    cfg = metrics["config"]
    primary = metrics["method"]
    lines = [
        "# Disentangling an attribute: flip, neutralize and measure bias (contrastive-PO §4.2)",
        "",
        f"Model: `{model_spec or 'in-memory model'}`. People world, {cfg['n_pref']} preference and {cfg['n_reg']} "
        f"regularization images (unbiased `train` split), {cfg['n_test']} unbiased `test` images in "
        f"{cfg['n_galleries']} retrieval galleries; linear head trained {cfg['steps']} steps (batch {cfg['batch_size']}), "
        f"seed {cfg['seed']}. Reproduce: `vlalign experiment attribute --out DIR --seed {cfg['seed']}`"
        + (" --quick" if cfg["n_test"] == 1024 and cfg["methods"] == ["dpo"] else "") + ".",
        "",
        "Definitions: the predicted attribute of an image of activity k is the more similar of \"the A-person is k\" "
        "and \"the B-person is k\"; activity accuracy is over \"the person is k\". t* is where P(pred A | A images) "
        "and P(pred A | B images) cross; `flipped_rate` is the share of images predicted with the other attribute at "
        "t = 1 (\"visible figures\" leaves out the book and bag images whose torso is hidden: their pixels do not "
        "depend on the style, so no model flips them better than chance). "
        f"Retrieval: each neutral prompt \"the person is k\" retrieves its top-{cfg['top_k']} images in each of "
        f"{cfg['n_galleries']} galleries of {cfg['n_test'] // cfg['n_galleries']} images; the parity gap is the mean over "
        "prompts of |share(A) − share(B)| among the pooled retrievals (0 = parity, 1 = one style only).",
        "",
        "## Targets",
        "",
    ]
    rows = []
    for method, summary in metrics["methods"].items():
        checks = summary["targets_met"]
        rows.append([method.upper(), _fmt(summary["flipped_rate"]), _fmt(summary["flipped_rate_visible"]),
                     "—" if summary["t_star"] is None else f"{summary['t_star']:.3f}",
                     _fmt(summary["attribute_a_rate_at_t_star"]), _fmt(summary["retrieval_parity_gap"]["neutralized"]),
                     f"{100 * summary['max_activity_drop']:.1f} pts",
                     f"{sum(checks.values())}/{len(checks)}"])
    lines += [markdown_table(["method", "flipped rate (≥ 90%)", "flipped, visible figures", "t*", "A rate at t* (50 ± 5%)",
                              "parity gap at t* (≤ 10%)", "max activity drop (≤ 2 pts)", "targets met"], rows), ""]
    any_missed = False
    for method, summary in metrics["methods"].items():
        missed = [name for name, ok in summary["targets_met"].items() if not ok]
        if missed:
            any_missed = True
            lines.append(f"- {method.upper()} misses: {'; '.join(missed)}.")
    if any_missed:
        cos = metrics["attribute_direction_cosine"]
        lines += ["", "Why: the head scores iᵀWᵀWt, and WᵀW is positive semi-definite, so reversing the attribute needs "
                  "WᵀW to turn the image attribute direction u against the text one Δ = T(A-prompt) − T(B-prompt); its "
                  f"condition number must exceed cot²θ. Here cos(u, Δ) = {cos:.2f} (θ = "
                  f"{math.degrees(math.acos(max(-1.0, min(1.0, cos)))):.0f}°), so the trained W is far from orthogonal "
                  "(σ ranges below), and its Σ^t path never passes through a model that has lost the style: the "
                  "attribute prompts balance at t*, but the neutral prompts still rank one style first. The next "
                  "section measures how exactly the style must be erased for the retrieval test to read neutral, and "
                  "how close the best linear map gets."]
    lines += _bounds_section(metrics)
    pre = metrics["pretrained"]
    lines += [
        "",
        "## Pretrained model",
        "",
        f"Activity accuracy {percent(pre['activity_accuracy'])}, attribute accuracy {percent(pre['original_rate'])}, "
        f"mean |per-activity skew| {100 * pre['mean_abs_skew']:.1f} pts (max {100 * pre['max_abs_skew']:.1f}), "
        f"skew towards the stereotype {100 * pre['stereotype_skew']:+.1f} pts, retrieval parity gap "
        f"{percent(pre['retrieval_parity_gap'])} (stereotyped share of retrievals {percent(pre['retrieval_stereotype_share'])}).",
        "",
        f"## Σ^t sweep ({primary.upper()})",
        "",
        f"![attribute sweep]({figures['fig3']})",
        "",
    ]
    s = metrics["methods"][primary]
    sweep_rows = [[f"{t:.2f}", percent(a), percent(ga), percent(gb), percent(f), percent(acc), percent(gap), percent(st)]
                  for t, a, ga, gb, f, acc, gap, st in zip(
                      s["t"], s["attribute_a_rate"], s["attribute_a_rate_given_a"], s["attribute_a_rate_given_b"],
                      s["flipped_rate_by_t"], s["activity_accuracy"], s["retrieval_parity_gap_by_t"],
                      s["retrieval_stereotype_share_by_t"])]
    lines += [markdown_table(["t", "pred A (all)", "pred A given A", "pred A given B", "flipped", "activity acc.",
                              "retrieval gap", "stereotyped share of retrievals"], sweep_rows), ""]
    head = s["head"]
    lines += [f"Trained W: σ in [{head['sigma_min']:.3f}, {head['sigma_max']:.3f}], ‖WᵀW − I‖_F = {head['orthogonality_error']:.3f}.", ""]
    lines += ["## Retrieval test", "", f"![retrieval mix]({figures['fig4']})", "", f"![retrieved images]({figures['strip']})", ""]
    names = [("original", "original"), ("flipped", "flipped"), ("neutralized", "neutralized")]
    ret_rows = []
    for k, activity in enumerate(ACTIVITIES):
        row = [activity, ATTRIBUTES[STEREOTYPE[k]]]
        for _, key in names:
            shares = s["retrieval_a_share"][key]
            skews = s["per_activity_skew"][key]
            row += [_fmt(None if shares is None else shares[k]), "—" if skews is None else f"{100 * skews[k]:+.1f}"]
        ret_rows.append(row)
    gaps = s["retrieval_parity_gap"]
    ret_rows.append(["**parity gap / stereotype skew**", "", _fmt(gaps["original"]), f"{100 * s['stereotype_skew']['original']:+.1f}",
                     _fmt(gaps["flipped"]), f"{100 * s['stereotype_skew']['flipped']:+.1f}", _fmt(gaps["neutralized"]),
                     "—" if s["stereotype_skew"]["neutralized"] is None else f"{100 * s['stereotype_skew']['neutralized']:+.1f}"])
    lines += [markdown_table(["activity prompt", "stereotype", "A share: original", "skew (pts)", "A share: flipped",
                              "skew (pts)", "A share: neutralized", "skew (pts)"], ret_rows), "",
              "Skew: P(predicted A | activity) − P(A | activity) on the balanced test set, in points.", ""]
    if len(metrics["methods"]) > 1:
        side = []
        for method, summary in metrics["methods"].items():
            side.append([method.upper(), _fmt(summary["flipped_rate"]),
                         "—" if summary["t_star"] is None else f"{summary['t_star']:.3f}",
                         _fmt(summary["attribute_a_rate_at_t_star"]),
                         _fmt(summary["retrieval_parity_gap"]["original"]), _fmt(summary["retrieval_parity_gap"]["flipped"]),
                         _fmt(summary["retrieval_parity_gap"]["neutralized"]),
                         percent(min(summary["activity_accuracy"])), f"{summary['head']['orthogonality_error']:.3f}"])
        lines += ["## Methods side by side", "",
                  markdown_table(["method", "flipped rate", "t*", "A rate at t*", "gap: original", "gap: flipped",
                                  "gap: neutralized", "min activity acc.", "‖WᵀW − I‖_F"], side), ""]
    lines += [f"Run time: {metrics['seconds']} s.", ""]
    return "\n".join(lines)


def run_attribute_experiment(out: str | Path, quick: bool = False, seed: int = 0) -> dict:
    """``vlalign experiment attribute``: the experiment on the embedded people MiniCLIP (``mini-people``)."""
    from vlalign.models.loading import load_model

    torch.manual_seed(seed)
    config = AttributeExperimentConfig.quick(seed) if quick else AttributeExperimentConfig(seed=seed)
    metrics = attribute_experiment(load_model("mini-people"), config, out, model_spec="mini-people", progress=not quick)
    summary = metrics["methods"][metrics["method"]]
    print(f"{metrics['method'].upper()}: flipped rate {_fmt(summary['flipped_rate'])}, t* = {summary['t_star']}, "
          f"A rate at t* {_fmt(summary['attribute_a_rate_at_t_star'])}, parity gap original / flipped / neutralized "
          f"{_fmt(summary['retrieval_parity_gap']['original'])} / {_fmt(summary['retrieval_parity_gap']['flipped'])} / "
          f"{_fmt(summary['retrieval_parity_gap']['neutralized'])}")
    print(f"report: {Path(out) / 'report.md'}")
    return metrics
