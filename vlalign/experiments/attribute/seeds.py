"""The attribute experiment over several seeds: one full run per seed, then the mean and spread of each headline
figure, and whether each target holds on every seed.

One seed is one draw of the preference, regularization and test images and of the training order. Training the
head also amplifies float noise (a 1e-6 relative change of the features moves the trained W by percents), so a
single seed's figure can differ between CPUs by about as much as it differs between seeds: the spread over seeds is
the uncertainty a reader should attach to the mean.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from vlalign.experiments.attribute.config import TARGETS, AttributeExperimentConfig
from vlalign.experiments.attribute.report import fmt_percent, miss_numbers, target_label
from vlalign.experiments.attribute.run import attribute_experiment
from vlalign.io import atomic_write_json
from vlalign.reporting.run_report import run_info, write_report
from vlalign.models.base import ContrastiveModel
from vlalign.reporting.bias_plots import seed_parity_figure, seed_spread_figure
from vlalign.reporting.tables import markdown_table


def spread(values: Sequence[float | None]) -> dict:
    """``mean``, ``std`` (sample standard deviation, n − 1; None for one value), ``min``, ``max`` of the values that
    are not None, their count ``n``, the number ``missing`` that are None, and the ``values`` themselves."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0, "missing": len(values),
                "values": list(values)}
    if any(math.isnan(v) for v in present):
        raise ValueError(f"spread of values with NaN: {list(values)}")
    return {"mean": statistics.fmean(present), "std": statistics.stdev(present) if len(present) > 1 else None,
            "min": min(present), "max": max(present), "n": len(present), "missing": len(values) - len(present),
            "values": list(values)}


def _ratio(summary: dict) -> float | None:
    gaps = summary["retrieval_parity_gap"]
    return None if gaps["neutralized"] is None or gaps["original"] == 0 else gaps["neutralized"] / gaps["original"]


#: Headline figures of one method in one seed's metrics: key -> (label, how to read it, shown as a percentage).
HEADLINE: dict[str, tuple[str, Callable[[dict], float | None], bool]] = {
    "flipped_rate": ("flipped rate (t = 1)", lambda s: s["flipped_rate"], True),
    "flipped_rate_visible": ("flipped rate, visible figures", lambda s: s["flipped_rate_visible"], True),
    "t_star": ("t*", lambda s: s["t_star"], False),
    "attribute_a_rate_at_t_star": ("A rate at t*", lambda s: s["attribute_a_rate_at_t_star"], True),
    "retrieval_parity_gap_neutralized": ("neutralized parity gap (mean over t* ± w)",
                                         lambda s: s["retrieval_parity_gap"]["neutralized"], True),
    "parity_gap_ratio": ("neutralized gap / pretrained gap", _ratio, False),
    "retrieval_parity_gap_at_t_star": ("parity gap at t* alone", lambda s: s["retrieval_parity_gap_at_t_star"], True),
    "retrieval_parity_gap_flipped": ("parity gap, flipped (t = 1)",
                                     lambda s: s["retrieval_parity_gap"]["flipped"], True),
    "max_activity_drop": ("max activity-accuracy drop over t", lambda s: s["max_activity_drop"], "pt"),
}


def aggregate_seeds(per_seed: dict[int, dict]) -> dict:
    """Mean and spread (:func:`spread`) of every :data:`HEADLINE` figure per method and of the pretrained model's
    and reference paths' figures, over the single-seed ``metrics.json`` dicts in ``per_seed``; each target per seed
    and on every seed."""
    if not per_seed:
        raise ValueError("no seeds to aggregate")
    seeds = sorted(per_seed)
    runs = [per_seed[s] for s in seeds]
    methods = list(runs[0]["methods"])
    for seed, run in zip(seeds, runs):
        if list(run["methods"]) != methods:
            raise ValueError(f"seed {seed} ran methods {list(run['methods'])}, seed {seeds[0]} ran {methods}")
    out_methods = {}
    for method in methods:
        summaries = [run["methods"][method] for run in runs]
        met = {seed: dict(s["targets_met"]) for seed, s in zip(seeds, summaries)}
        names = list(next(iter(met.values())))
        every = {name: all(m[name] for m in met.values()) for name in names}
        out_methods[method] = {
            "figures": {key: spread([read(s) for s in summaries]) for key, (_, read, _) in HEADLINE.items()},
            "targets_met": met, "targets_met_every_seed": every, "all_targets_every_seed": all(every.values()),
        }
    bounds = {name: {key: spread([run["bounds"][name][key] for run in runs])
                     for key in ("t_star", "retrieval_parity_gap_neutralized", "retrieval_parity_gap_at_t_star",
                                 "min_retrieval_parity_gap")}
              for name in runs[0]["bounds"]}
    return {
        "seeds": seeds,
        "method": runs[0]["method"],
        "targets": dict(TARGETS),
        "neutral_half_width": runs[0]["config"]["neutral_half_width"],
        "pretrained": {key: spread([run["pretrained"][key] for run in runs])
                       for key in ("activity_accuracy", "original_rate", "retrieval_parity_gap", "max_abs_skew")},
        "retrieval_parity_gap_max": spread([run["retrieval_parity_gap_max"] for run in runs]),
        "flipped_rate_ceiling": spread([run["flipped_rate_ceiling"] for run in runs]),
        "methods": out_methods,
        "bounds": bounds,
    }


def _fmt(stats: dict, as_percent: bool | str) -> str:
    """'mean ± std [min, max]' in percent, in percentage points (``as_percent == "pt"``: a drop or gap) or plain
    numbers."""
    if stats["n"] == 0:
        return "—"
    f = (lambda v: f"{100 * v:.1f}") if as_percent else (lambda v: f"{v:.3f}")
    std = "" if stats["std"] is None else f" ± {f(stats['std'])}"
    missing = f" (none on {stats['missing']} of {stats['n'] + stats['missing']} seeds)" if stats["missing"] else ""
    unit = " pt" if as_percent == "pt" else ("%" if as_percent else "")
    return f"{f(stats['mean'])}{std}{unit} [{f(stats['min'])}, {f(stats['max'])}]{missing}"


def seeds_report(agg: dict, per_seed: dict[int, dict], figures: dict[str, str], command: str) -> str:
    """The Markdown report of a multi-seed run."""
    seeds, half = agg["seeds"], agg["neutral_half_width"]
    pre = agg["pretrained"]
    lines = [
        "# Disentangling an attribute over seeds (contrastive-PO §4.2)", "",
        f"Seeds {', '.join(map(str, seeds))}: one full run each (its own `seed-<s>/report.md`), each a fresh draw of "
        "the preference, regularization and test images and of the training order. Cells give mean ± sample standard "
        f"deviation [min, max] over the seeds. Reproduce: `{command}`.", "",
        f"The neutralized parity gap is the retrieval parity gap averaged over t* ± {half:g}; t* is the interpolated "
        "crossing of P(pred A | A) and P(pred A | B) on the Σ^t grid. Pretrained model: activity accuracy "
        f"{_fmt(pre['activity_accuracy'], True)}, retrieval parity gap {_fmt(pre['retrieval_parity_gap'], True)}.", "",
        "## Headline figures", "",
        f"![spread over seeds]({figures['spread']})", "",
    ]
    methods = list(agg["methods"])
    rows = [[label] + [_fmt(agg["methods"][m]["figures"][key], pct) for m in methods]
            for key, (label, _, pct) in HEADLINE.items()]
    lines += [markdown_table(["figure"] + [m.upper() for m in methods], rows), ""]
    names = list(next(iter(agg["methods"].values()))["targets_met_every_seed"])
    lines += ["## Targets on every seed", "",
              f"Flipped rate ≥ {100 * TARGETS['flipped_rate_min']:.0f}% (ceiling "
              f"{_fmt(agg['flipped_rate_ceiling'], True)}); neutralized parity gap ≤ "
              f"{TARGETS['parity_gap_max_fraction']:g} × the seed's pretrained gap; activity accuracy within "
              f"{100 * TARGETS['activity_drop_max']:.0f} points of the pretrained model at every t.", ""]
    target_rows = []
    for m in methods:
        entry = agg["methods"][m]
        for seed in seeds:
            met = entry["targets_met"][seed]
            target_rows.append([m.upper(), str(seed)] + ["yes" if met[n] else "**no**" for n in names])
        target_rows.append([f"**{m.upper()}: every seed**", ""] +
                           ["**yes**" if entry["targets_met_every_seed"][n] else "**no**" for n in names])
    lines += [markdown_table(["method", "seed"] + [target_label(n) for n in names], target_rows), ""]
    for m in methods:
        for seed in seeds:
            summary = per_seed[seed]["methods"][m]
            if not all(summary["targets_met"].values()):
                lines.append(f"- {m.upper()}, seed {seed}: {miss_numbers(summary)}.")
    verdict = [m.upper() for m in methods if agg["methods"][m]["all_targets_every_seed"]]
    lines += ["", f"Methods meeting every target on every seed: {', '.join(verdict) if verdict else 'none'}.", ""]
    lines += ["## The parity gap along Σ^t, per seed", "",
              f"![parity gap per seed]({figures['parity']})", "",
              f"Shaded: the window t* ± {half:g} over which the neutralized gap is averaged; thick bar: that mean; "
              "dashed: each seed's target.", ""]
    bound_rows = [[name.replace("_", " "), _fmt(b["t_star"], False), _fmt(b["retrieval_parity_gap_neutralized"], True),
                   _fmt(b["retrieval_parity_gap_at_t_star"], True), _fmt(b["min_retrieval_parity_gap"], True)]
                  for name, b in agg["bounds"].items()]
    lines += ["## Reference paths (counterfactual twins)", "",
              markdown_table(["path", "t*", f"parity gap, mean over t* ± {half:g}", "gap at t* alone", "lowest gap"],
                             bound_rows), ""]
    per_rows = [[str(s), fmt_percent(per_seed[s]["pretrained"]["retrieval_parity_gap"])] +
                [fmt_percent(per_seed[s]["methods"][m]["retrieval_parity_gap"]["neutralized"]) for m in methods] +
                [f"[seed-{s}/report.md](seed-{s}/report.md)"] for s in seeds]
    per_headers = ["seed", "pretrained gap"] + [f"{m.upper()} neutralized gap" for m in methods] + ["report"]
    lines += ["## Per seed", "", markdown_table(per_headers, per_rows), ""]
    return "\n".join(lines)


def attribute_seeds(model: ContrastiveModel, config: AttributeExperimentConfig, seeds: Sequence[int], out: str | Path,
                    model_spec: str | None = None, progress: bool = False, command: str | None = None) -> dict:
    """:func:`attribute_experiment` once per seed (``config`` with its ``seed`` replaced) into ``out/seed-<s>/``,
    then :func:`write_seed_summary` into ``out``."""
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list without repeats, got {seeds}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    per_seed = {}
    for seed in seeds:
        torch.manual_seed(seed)  # as a single-seed run does, so seed-<s>/ equals `--seed s`
        per_seed[seed] = attribute_experiment(model, dataclasses.replace(config, seed=seed), out / f"seed-{seed}",
                                              model_spec, progress)
    command = command or f"vlalign experiment attribute --seeds {','.join(map(str, seeds))} --out DIR"
    return write_seed_summary(out, per_seed, command, round(time.perf_counter() - started, 1))


def write_seed_summary(out: str | Path, per_seed: dict[int, dict], command: str, seconds: float | None = None) -> dict:
    """The aggregate (:func:`aggregate_seeds`) of single-seed ``metrics.json`` dicts, written to ``out`` as
    ``metrics.json``, ``report.md``, ``fig_seed_spread.png`` and ``fig_seed_parity.png``; returns the aggregate."""
    out = Path(out)
    agg = aggregate_seeds(per_seed)
    seeds = agg["seeds"]
    spread_panels = {key: {m.upper(): agg["methods"][m]["figures"][key]["values"] for m in agg["methods"]}
                     for key in ("flipped_rate", "parity_gap_ratio", "max_activity_drop", "t_star")}
    targets = {"flipped_rate": TARGETS["flipped_rate_min"], "parity_gap_ratio": TARGETS["parity_gap_max_fraction"],
               "max_activity_drop": TARGETS["activity_drop_max"], "t_star": None}
    titles = {key: HEADLINE[key][0] for key in spread_panels}
    spread_fig = seed_spread_figure(spread_panels, titles, targets, seeds, out / "fig_seed_spread.png")
    curves = {m.upper(): {s: (run["t"], run["retrieval_parity_gap_by_t"], run["neutral_window"],
                              run["retrieval_parity_gap"]["neutralized"], per_seed[s]["retrieval_parity_gap_max"])
                          for s in seeds for run in [per_seed[s]["methods"][m]]} for m in agg["methods"]}
    parity_fig = seed_parity_figure(curves, out / "fig_seed_parity.png")
    figures = {"spread": spread_fig.name, "parity": parity_fig.name}
    config = {k: v for k, v in per_seed[seeds[0]]["config"].items() if k != "seed"}
    agg.update(config=config, command=command, per_seed={s: f"seed-{s}/metrics.json" for s in seeds}, figures=figures,
               seconds=seconds)
    atomic_write_json(out / "metrics.json", agg)
    write_report(out, "experiment-attribute-seeds", seeds_report(agg, per_seed, figures, command),
                 run_info(command=command, seconds=seconds))
    return agg


def run_attribute_seeds(out: str | Path, seeds: Sequence[int], quick: bool = False) -> dict:
    """``vlalign experiment attribute --seeds 0,1,2``: :func:`attribute_seeds` on the embedded people MiniCLIP."""
    from vlalign.models.loading import load_model

    config = AttributeExperimentConfig.quick() if quick else AttributeExperimentConfig()
    command = f"vlalign experiment attribute --seeds {','.join(map(str, seeds))} --out DIR{' --quick' if quick else ''}"
    agg = attribute_seeds(load_model("mini-people"), config, seeds, out, model_spec="mini-people", progress=not quick,
                          command=command)
    for method, entry in agg["methods"].items():
        f = entry["figures"]
        print(f"{method.upper()} over seeds {agg['seeds']}: flipped rate {_fmt(f['flipped_rate'], True)}, "
              f"neutralized parity gap {_fmt(f['retrieval_parity_gap_neutralized'], True)}, max activity drop "
              f"{_fmt(f['max_activity_drop'], True)}; every target on every seed: "
              f"{'yes' if entry['all_targets_every_seed'] else 'no'}")
    print(f"report: {Path(out) / 'report.md'}")
    return agg


def report_from_run(run_dir: str | Path) -> str:
    """The Markdown report of a finished multi-seed folder, from its aggregate and per-seed ``metrics.json``."""
    run_dir = Path(run_dir)
    agg = json.loads((run_dir / "metrics.json").read_text())
    per_seed = {int(s): json.loads((run_dir / path).read_text()) for s, path in agg["per_seed"].items()}
    # JSON keys are strings: the per-seed target checks are keyed by the seeds as integers again.
    for entry in agg["methods"].values():
        entry["targets_met"] = {int(seed): met for seed, met in entry["targets_met"].items()}
    return seeds_report(agg, per_seed, agg["figures"], agg["command"])
