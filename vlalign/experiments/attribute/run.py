"""Disentangling an attribute (contrastive-PO §4.2, Figs. 3-4) on the people world.

1. Preference data from unbiased people images: for an image of style s doing activity k, the preferred text is
   "the <other style>-person is <k>", the dispreferred one "the <s>-person is <k>"; the regularization set keeps
   the policy over the neutral prompts "the person is <k>" (activity recognition) near the reference.
2. A linear head W on both embeddings is trained with DPO (and IPO, KTO), features frozen and cached.
3. W_t = U Σ^t Vᵀ is swept over t in [0, 1] (step 0.01): t = 0 is the pretrained model, t = 1 the flipped one.
   Per t: attribute-prediction rates and activity accuracy. t* is where P(pred A | A images) and P(pred A | B
   images) first cross, interpolated between grid points: the predicted attribute no longer depends on the true
   one (the attribute is neutralized).
4. Retrieval test along the sweep: each neutral activity prompt retrieves its top-10 images from each of several
   galleries; bias is the attribute mix. The neutralized model's parity gap is the gap's mean over t* ± 0.05
   (:func:`vlalign.evaluation.bias.neutral_point`): the gap is steep near t*, and float noise moves t*.
5. Reference paths from counterfactual twins (each test image re-rendered with the other style): an ideal eraser
   that moves each image towards its twin, and the least-squares linear map from images to twins. They show how
   exactly the style must be erased for the retrieval test to read neutral, and how close a linear map gets.

Every metric is computed from embeddings: the image and prompt embeddings of the base model are computed once, by
:func:`vlalign.models.embeddings.image_embeddings` in fixed consecutive batches (as the trainer computes its frozen
features of the same images), and each W_t is applied to them (what HeadedCLIP.with_power(t) computes image by
image). Training the head is what float noise moves most: a 1e-6 relative change of the image features changes
the trained W by several percent, as much as another seed; hence :mod:`.seeds`, the mean and spread over seeds.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

import torch

from vlalign.data.people import PeopleWorld, flip_preference_data
from vlalign.evaluation.people import (
    attribute_direction_cosine, neutral_score_spread, people_metrics, people_text_embeddings,
)
from vlalign.experiments.attribute.config import AttributeExperimentConfig
from vlalign.experiments.attribute.report import attribute_figures, attribute_report, fmt_percent
from vlalign.experiments.attribute.sweeps import (
    erasure_bounds, parity_gap_max, summarize_sweep, sweep_head, target_checks,
)
from vlalign.io import atomic_write_json
from vlalign.reporting.run_report import run_info, write_report
from vlalign.models.base import ContrastiveModel
from vlalign.models.embeddings import image_embeddings
from vlalign.models.heads import HeadedCLIP
from vlalign.pipelines.preference import save_aligned_model
from vlalign.training.methods.preference import train_preference


def perturb_image_tower(model: ContrastiveModel, relative: float, seed: int) -> ContrastiveModel:
    """A copy of ``model`` whose image-tower weights are each multiplied by (1 + relative · N(0, 1)), the draws
    from a generator seeded with ``seed`` (the text tower and ``model`` itself are left as they are)."""
    if relative < 0:
        raise ValueError(f"relative noise must be >= 0, got {relative}")
    noisy = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in noisy.image_encoder.parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float64).to(param.device)
            param.mul_((1 + relative * noise).to(param.dtype))
    return noisy


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
    if config.weight_noise > 0:
        model = perturb_image_tower(model, config.weight_noise, config.weight_noise_seed)
    world = PeopleWorld()
    train = world.sample("train", config.n_pref + config.n_reg, config.seed)
    test = world.sample("test", config.n_test, config.test_draw)
    pref, reg = flip_preference_data(train, config.n_pref, config.regularize_on)
    image_emb = image_embeddings(model, test.images)
    text = people_text_embeddings(model)
    pretrained = people_metrics(image_emb, test, text, config.n_galleries, config.top_k)
    # Counterfactual twins (same scenes, other style) of the test images and of the preference images.
    test_twins = world.sample("test", config.n_test, config.test_draw, swap_attribute=True)
    fit_twins = world.sample("train", config.n_pref, config.seed, swap_attribute=True)
    gap_max = parity_gap_max(pretrained["retrieval_parity_gap"])
    bounds = erasure_bounds(image_emb, image_embeddings(model, test_twins.images),
                            image_embeddings(model, pref.images), image_embeddings(model, fit_twins.images),
                            text, test, config, gap_max)

    methods: dict[str, dict] = {}
    sweeps: dict[str, dict] = {}
    heads: dict[str, HeadedCLIP] = {}
    for method in config.methods:
        result = train_preference(model, pref, reg, *config.train_config(method), progress=progress)
        aligned = result.model
        if not isinstance(aligned, HeadedCLIP):
            raise TypeError(f"head-mode training returned {type(aligned).__name__}, expected HeadedCLIP")
        aligned.head.cpu()
        heads[method] = aligned
        if model_spec is not None:
            save_aligned_model(result, out / method, model_spec)
        sweeps[method] = sweep_head(aligned, image_emb, text, test, config)
        methods[method] = summarize_sweep(pretrained, sweeps[method])
        methods[method]["targets_met"] = target_checks(methods[method])

    primary = config.methods[0]
    metrics = {
        "method": primary,
        **methods[primary],
        "pretrained": {k: pretrained[k] for k in ("activity_accuracy", "original_rate", "a_rate", "mean_abs_skew",
                                                  "max_abs_skew", "stereotype_skew", "per_activity_a_rate",
                                                  "retrieval_parity_gap", "retrieval_stereotype_share")},
        "retrieval_parity_gap_max": gap_max,
        "attribute_direction_cosine": attribute_direction_cosine(image_emb, test, text),
        "methods": methods,
        "bounds": bounds,
        "flipped_rate_ceiling": 1.0 - float(test.occluded.float().mean()) / 2,
        "neutral_score_spread": neutral_score_spread(image_emb, test, text, float(model.logit_scale.detach())),
        "config": dataclasses.asdict(config),
        "seconds": None,
    }
    figures = attribute_figures(out, test, image_emb, text, sweeps, pretrained, heads[primary], primary, config, bounds)
    metrics["figures"] = figures
    metrics["model_spec"] = model_spec
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(out / "metrics.json", metrics)
    write_report(out, "experiment-attribute", attribute_report(metrics, figures, model_spec),
                 run_info(seconds=metrics["seconds"]))
    return metrics


def run_attribute_experiment(out: str | Path, quick: bool = False, seed: int = 0) -> dict:
    """``vlalign experiment attribute``: the experiment on the embedded people MiniCLIP (``mini-people``)."""
    from vlalign.models.loading import load_model

    torch.manual_seed(seed)
    config = AttributeExperimentConfig.quick(seed) if quick else AttributeExperimentConfig(seed=seed)
    metrics = attribute_experiment(load_model("mini-people"), config, out, model_spec="mini-people", progress=not quick)
    summary = metrics["methods"][metrics["method"]]
    t_star = "none" if summary["t_star"] is None else f"{summary['t_star']:.3f}"
    print(f"{metrics['method'].upper()}: flipped rate {fmt_percent(summary['flipped_rate'])}, t* = {t_star}, "
          f"A rate at t* {fmt_percent(summary['attribute_a_rate_at_t_star'])}, parity gap original / flipped / neutralized "
          f"{fmt_percent(summary['retrieval_parity_gap']['original'])} / {fmt_percent(summary['retrieval_parity_gap']['flipped'])} / "
          f"{fmt_percent(summary['retrieval_parity_gap']['neutralized'])}")
    print(f"report: {Path(out) / 'report.md'}")
    return metrics


def report_from_run(run_dir: str | Path) -> str:
    """The Markdown report of a finished run folder, from its ``metrics.json``."""
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    return attribute_report(metrics, metrics["figures"], metrics.get("model_spec"))
