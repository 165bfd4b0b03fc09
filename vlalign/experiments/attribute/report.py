"""Figures and the Markdown report of the attribute experiment."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import torch

from vlalign.data.people import ACTIVITIES, ATTRIBUTES, STEREOTYPE, PeopleSet
from vlalign.evaluation.erasure import window_below
from vlalign.evaluation.people import PeopleTextEmbeddings, gallery_top_k
from vlalign.experiments.attribute.config import BOUND_NAMES, NEUTRAL_HALF_WIDTH, TARGETS, AttributeExperimentConfig
from vlalign.experiments.attribute.sweeps import parity_gap_max, power_head
from vlalign.models.heads import HeadedCLIP
from vlalign.reporting.bias_plots import (
    attribute_sweep_figure, parity_gap_figure, retrieval_mix_figure, retrieval_strip,
)
from vlalign.reporting.tables import markdown_table, percent, points


def target_label(name: str) -> str:
    """A target's name as metrics.json keys it, with its rate bound in percent: 'flipped rate >= 0.88' ->
    'flipped rate ≥ 88%' (a bound that is not a trailing fraction, such as '0.5 x pretrained', is kept)."""
    match = re.fullmatch(r"(.*) (>=|<=) (0?\.\d+|1(?:\.0+)?)", name)
    if match is None:
        return name.replace(">=", "≥").replace("<=", "≤").replace(" x ", " × ")
    return f"{match[1]} {'≥' if match[2] == '>=' else '≤'} {100 * float(match[3]):g}%"


def attribute_figures(out: Path, test: PeopleSet, image_emb: torch.Tensor, text: PeopleTextEmbeddings, sweeps: dict[str, dict],
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
        head = None if t is None else power_head(primary_model, t)
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
    windows = {f"{m.upper()} head: U Σ^t Vᵀ": None if sw["neutral_window"] is None else
               (*sw["neutral_window"], sw["neutralized_parity_gap"]) for m, sw in sweeps.items()}
    windows.update({BOUND_NAMES[name]: None if b["neutral_window"] is None else
                    (*b["neutral_window"], b["retrieval_parity_gap_neutralized"]) for name, b in bounds.items()})
    parity = parity_gap_figure(curves, parity_gap_max(pretrained["retrieval_parity_gap"]), out / "fig_parity_paths.png",
                               windows)
    return {"fig3": fig3.name, "fig4": fig4.name, "strip": strip.name, "parity": parity.name}


def fmt_percent(value: float | None) -> str:
    return "—" if value is None else percent(value)


def miss_numbers(summary: dict) -> str:
    """The three targeted figures of one method and seed beside their thresholds, for a report line."""
    gaps = summary["retrieval_parity_gap"]
    return (f"flipped rate {fmt_percent(summary['flipped_rate'])} vs ≥ {100 * TARGETS['flipped_rate_min']:.0f}%; "
            f"neutralized gap {fmt_percent(gaps['neutralized'])} vs ≤ {percent(summary['retrieval_parity_gap_max'])} "
            f"= {TARGETS['parity_gap_max_fraction']:g} × {percent(gaps['original'])}; max activity drop "
            f"{points(summary['max_activity_drop'])} vs ≤ {points(TARGETS['activity_drop_max'])}")


def _fmt_t(t: float | None) -> str:
    return "—" if t is None else f"{t:.2f}"


def _window(window: list[float] | tuple[float, float] | None) -> str:
    return "none" if window is None else f"{window[0]:.2f} – {window[1]:.2f}"


def _bounds_section(metrics: dict) -> list[str]:
    """The report's comparison of the trained heads with the counterfactual reference paths."""
    bounds, gap_max = metrics["bounds"], metrics["retrieval_parity_gap_max"]
    rows = []
    for method, s in metrics["methods"].items():
        window = window_below(s["t"], s["retrieval_parity_gap_by_t"], gap_max)
        rows.append([f"{method.upper()} head (Σ^t)", _fmt_t(s["t_star"]),
                     fmt_percent(s["attribute_a_rate_at_t_star"]), fmt_percent(s["retrieval_parity_gap"]["neutralized"]),
                     fmt_percent(s["retrieval_parity_gap_at_t_star"]), fmt_percent(s["min_retrieval_parity_gap"]),
                     _window(window)])
    for name, b in bounds.items():
        rows.append([BOUND_NAMES[name], _fmt_t(b["t_star"]),
                     fmt_percent(b["attribute_a_rate_at_t_star"]), fmt_percent(b["retrieval_parity_gap_neutralized"]),
                     fmt_percent(b["retrieval_parity_gap_at_t_star"]), fmt_percent(b["min_retrieval_parity_gap"]),
                     _window(b["parity_window"])])
    half = metrics["config"]["neutral_half_width"]
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
             markdown_table(["path", "t*", "A rate at t*", f"parity gap, mean over t* ± {half:g}", "gap at t* alone",
                             "lowest gap on the path", f"t with gap ≤ {100 * gap_max:.1f}%"], rows), "",
             f"- The retrieval test can read \"neutral\": the ideal eraser reaches a gap of {fmt_percent(ideal['retrieval_parity_gap_at_t_star'])} "
             f"at t* = {_fmt_t(ideal['t_star'])} with activity accuracy {fmt_percent(ideal['activity_accuracy_at_t_star'])}. "
             f"But the dip is narrow (gap ≤ {100 * gap_max:.1f}% for t in {_window(ideal['parity_window'])}, grid "
             f"step 0.01), so even its mean over t* ± {half:g} is "
             f"{fmt_percent(ideal['retrieval_parity_gap_neutralized'])}. Within one activity the neutral "
             f"prompt's scores vary little (standard deviation {spread_lo:.1f}–{spread_hi:.1f} logits per style) against "
             f"the {gap_lo:.1f}–{gap_hi:.1f}-logit gap between the styles, so a small leftover of the style decides the top-10.",
             f"- The best linear map reproduces {fmt_percent(linear['explained_change'])} of the style change "
             f"(1 − residual / change, on test twins). Along its path the gap never falls below "
             f"{fmt_percent(linear['min_retrieval_parity_gap'])}, and it is {fmt_percent(linear['retrieval_parity_gap_at_t_star'])} at its t*.",
             f"- Flipped-rate ceiling: {fmt_percent(metrics['flipped_rate_ceiling'])} of test images can flip at most. A figure "
             "whose torso is hidden looks the same in either style, so only about half of those images can flip."]
    return lines


def settings_beyond_command(cfg: dict) -> tuple[bool, dict]:
    """Whether the run is the command's ``--quick`` one, and the settings in which it differs from what the
    command runs (``AttributeExperimentConfig`` fields; weight noise is reported apart). Compared as JSON values, so
    a config read back from ``metrics.json`` (lists for tuples) compares alike."""
    as_json = lambda value: json.loads(json.dumps(value))  # noqa: E731
    trained = set(cfg.get("methods", []))

    def trained_only(config: dict) -> dict:
        # (β, λ) of methods the run did not train do not change it (a quick run trains DPO alone).
        params = config.get("method_params")
        if isinstance(params, dict):
            config = {**config, "method_params": {m: v for m, v in params.items() if m in trained}}
        return config

    run = trained_only(as_json(cfg))
    # Only the fields the run recorded: a folder from before a field existed ran with that field's then-default.
    recorded = lambda config: trained_only(  # noqa: E731
        {k: v for k, v in as_json(dataclasses.asdict(config)).items() if k in run})
    quick = recorded(AttributeExperimentConfig.quick(cfg["seed"]))
    base = quick if run == quick else recorded(AttributeExperimentConfig(seed=cfg["seed"]))
    skip = {"weight_noise", "weight_noise_seed"}
    return run == quick, {k: v for k, v in run.items() if k not in skip and base.get(k) != v}


def attribute_report(metrics: dict, figures: dict[str, str], model_spec: str | None) -> str:
    cfg = metrics["config"]
    primary = metrics["method"]
    is_quick, beyond = settings_beyond_command(cfg)
    lines = [
        "# Disentangling an attribute: flip, neutralize and measure bias (contrastive-PO §4.2)",
        "",
        f"Model: `{model_spec or 'in-memory model'}`. People world, {cfg['n_pref']} preference and "
        + (f"{cfg['n_reg']} other regularization images" if cfg.get("regularize_on", "rest") == "rest"
           else "the same images for regularization (the paper's choice)")
        + f" (unbiased `train` split), {cfg['n_test']} unbiased `test` images in "
        f"{cfg['n_galleries']} retrieval galleries; linear head trained {cfg['steps']} steps (batch {cfg['batch_size']}), "
        f"seed {cfg['seed']}. Reproduce: `vlalign experiment attribute --out DIR --seed {cfg['seed']}"
        + (" --quick" if is_quick else "") + "`"
        + (" with these `AttributeExperimentConfig` fields changed from the command's: "
           + ", ".join(f"`{k}={v}`" for k, v in beyond.items()) if beyond else "") + "."
        + (f" Image-tower weights perturbed by {cfg['weight_noise']:g} relative noise (noise seed "
           f"{cfg['weight_noise_seed']}), as another CPU's rounding would." if cfg["weight_noise"] else "")
        + (" DPO's and KTO's default (β, λ) (`METHOD_PARAMS`) were chosen on the first 1,600 test images of seed 0, "
           "so seed 0's figures are not an untouched draw for them; other seeds are."
           if (cfg["seed"] if cfg.get("test_seed") is None else cfg["test_seed"]) == 0
           and {"dpo", "kto"} & set(cfg["methods"]) else ""),
        "",
        "Definitions: the predicted attribute of an image of activity k is the more similar of \"the A-person is k\" "
        "and \"the B-person is k\"; activity accuracy is over \"the person is k\". The Σ^t sweep samples "
        f"{cfg['t_points']} values of t evenly over [0, 1]. t* is the first t where P(pred A | A images) and "
        "P(pred A | B images) cross, interpolated linearly between the two grid points around the crossing (so float "
        "noise moves it a little, never by a grid step); `flipped_rate` is the share of images predicted with the "
        "other attribute at t = 1 (\"visible figures\" leaves out the book and bag images whose torso is hidden: "
        "their pixels do not depend on the style, so no model flips them better than chance). "
        f"Retrieval: each neutral prompt \"the person is k\" retrieves its top-{cfg['top_k']} images in each of "
        f"{cfg['n_galleries']} galleries of {cfg['n_test'] // cfg['n_galleries']} images; the parity gap is the mean over "
        "prompts of |share(A) − share(B)| among the pooled retrievals (0 = parity, 1 = one style only). The "
        f"**neutralized parity gap** is the mean of that gap over t* ± {cfg['neutral_half_width']:g} (the gap is steep "
        "near t*, so it is not read at t* alone; the value at t* alone is shown beside it).",
        "",
        "## Targets",
        "",
        f"Flipped rate ≥ {100 * TARGETS['flipped_rate_min']:.0f}%; neutralized parity gap ≤ "
        f"{TARGETS['parity_gap_max_fraction']:g} × the pretrained gap "
        f"({percent(metrics['pretrained']['retrieval_parity_gap'])} → ≤ {percent(metrics['retrieval_parity_gap_max'])})"
        "; activity accuracy within "
        f"{100 * TARGETS['activity_drop_max']:.0f} points of the pretrained model at every t of the sweep. One seed "
        "is one draw: `--seeds 0,1,2` reports the mean and spread, and whether each target holds on every seed.",
        "",
    ]
    rows = []
    for method, summary in metrics["methods"].items():
        checks = summary["targets_met"]
        rows.append([method.upper(), fmt_percent(summary["flipped_rate"]), fmt_percent(summary["flipped_rate_visible"]),
                     "—" if summary["t_star"] is None else f"{summary['t_star']:.3f}",
                     fmt_percent(summary["attribute_a_rate_at_t_star"]), fmt_percent(summary["retrieval_parity_gap"]["neutralized"]),
                     fmt_percent(summary["retrieval_parity_gap_at_t_star"]),
                     points(summary['max_activity_drop']),
                     f"{sum(checks.values())}/{len(checks)}"])
    lines += [markdown_table(["method", f"flipped rate (≥ {100 * TARGETS['flipped_rate_min']:.0f}%)",
                              "flipped, visible figures", "t*", "A rate at t*",
                              f"neutralized parity gap (≤ {percent(metrics['retrieval_parity_gap_max'])})",
                              "gap at t* alone", f"max activity drop (≤ {points(TARGETS['activity_drop_max'])})",
                              "targets met"], rows), ""]
    any_missed = False
    for method, summary in metrics["methods"].items():
        missed = [target_label(name) for name, ok in summary["targets_met"].items() if not ok]
        if missed:
            any_missed = True
            lines.append(f"- {method.upper()} misses: {'; '.join(missed)}. Its figures: {miss_numbers(summary)}.")
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
        f"mean |per-activity skew| {points(pre['mean_abs_skew'])} (max {points(pre['max_abs_skew'])}), "
        f"skew towards the stereotype {points(pre['stereotype_skew'], signed=True)}, retrieval parity gap "
        f"{percent(pre['retrieval_parity_gap'])} (stereotyped share of retrievals {percent(pre['retrieval_stereotype_share'])}).",
        "",
        f"## Σ^t sweep ({primary.upper()})",
        "",
        f"![attribute sweep]({figures['fig3']})",
        "",
    ]
    s = metrics["methods"][primary]
    stride = max(1, (len(s["t"]) - 1) // 20)  # at most 21 rows; metrics.json has every t
    sweep_rows = [[f"{t:.2f}", percent(a), percent(ga), percent(gb), percent(f), percent(acc), percent(gap), percent(st)]
                  for i, (t, a, ga, gb, f, acc, gap, st) in enumerate(zip(
                      s["t"], s["attribute_a_rate"], s["attribute_a_rate_given_a"], s["attribute_a_rate_given_b"],
                      s["flipped_rate_by_t"], s["activity_accuracy"], s["retrieval_parity_gap_by_t"],
                      s["retrieval_stereotype_share_by_t"])) if i % stride == 0 or i == len(s["t"]) - 1]
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
            row += [fmt_percent(None if shares is None else shares[k]), "—" if skews is None else f"{100 * skews[k]:+.1f}"]
        ret_rows.append(row)
    gaps = s["retrieval_parity_gap"]
    ret_rows.append(["**parity gap / stereotype skew**", "", fmt_percent(gaps["original"]), f"{100 * s['stereotype_skew']['original']:+.1f}",
                     fmt_percent(gaps["flipped"]), f"{100 * s['stereotype_skew']['flipped']:+.1f}",
                     f"{fmt_percent(s.get('retrieval_parity_gap_at_t_star'))} (t* ± "
                     f"{cfg.get('neutral_half_width', NEUTRAL_HALF_WIDTH):g}: {fmt_percent(gaps['neutralized'])})",
                     "—" if s["stereotype_skew"]["neutralized"] is None else f"{100 * s['stereotype_skew']['neutralized']:+.1f}"])
    lines += [markdown_table(["activity prompt", "stereotype", "A share: original", "skew (pt)", "A share: flipped",
                              "skew (pt)", "A share: neutralized", "skew (pt)"], ret_rows), "",
              "Skew: P(predicted A | activity) − P(A | activity) on the balanced test set, in points.", ""]
    if len(metrics["methods"]) > 1:
        side = []
        for method, summary in metrics["methods"].items():
            side.append([method.upper(), fmt_percent(summary["flipped_rate"]),
                         "—" if summary["t_star"] is None else f"{summary['t_star']:.3f}",
                         fmt_percent(summary["attribute_a_rate_at_t_star"]),
                         fmt_percent(summary["retrieval_parity_gap"]["original"]), fmt_percent(summary["retrieval_parity_gap"]["flipped"]),
                         fmt_percent(summary["retrieval_parity_gap"]["neutralized"]),
                         percent(min(summary["activity_accuracy"])), f"{summary['head']['orthogonality_error']:.3f}"])
        lines += ["## Methods side by side", "",
                  markdown_table(["method", "flipped rate", "t*", "A rate at t*", "gap: original", "gap: flipped",
                                  "gap: neutralized", "min activity acc.", "‖WᵀW − I‖_F"], side), ""]
    lines += [f"Run time: {metrics['seconds']} s.", ""]
    return "\n".join(lines)
