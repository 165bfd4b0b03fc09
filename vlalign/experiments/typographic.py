"""Table 1 of the contrastive-PO paper in the mini world (``vlalign experiment typographic``).

Rows: the pretrained MiniCLIP, cross-entropy fine-tuning, PAINT, Materzynska et al., Defense-Prefix, and DPO /
IPO / KTO on the full image tower. Columns: clean, typographic and non-reading-control accuracy on the eight
in-domain classes used for preference training and on the four held-out classes never seen there, plus the KL of
each model's clean-image policy from the pretrained one. The non-reading control writes random letters in the
typographic words' boxes, so control − typographic (the *reading effect*) is what reading the word costs, apart
from occlusion. The pretrained model's linear object probe on frozen typographic features is reported too. Also: BMA
vs EMA for the PO methods (Table 5), the Σ^t sweep of a linear-head DPO run (Fig. 2) and a β sweep of KL_clean
(Fig. 5b). The tables, figures of merit and report are in :mod:`vlalign.experiments.typographic_report`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch

from vlalign.data.mini_world import INDOMAIN_CLASSES, MiniWorld
from vlalign.data.preference import PreferenceSet, RegularizationSet, typographic_preference_data
from vlalign.evaluation.probe import object_probe
from vlalign.evaluation.typographic import evaluate_typographic
from vlalign.evaluation.zero_shot import zero_shot_evaluate
from vlalign.experiments.control import control_sweep
from vlalign.experiments.typographic_report import (PO_METHODS, ROW_ORDER, command, methods_table,
                                                    report_text, summarize, write_plots)
from vlalign.models.base import ContrastiveModel
from vlalign.io import atomic_write_json
from vlalign.models.loading import load_model
from vlalign.reporting.run_report import run_info, write_report
from vlalign.training.methods.baselines import train_defense_prefix, train_materzynska
from vlalign.training.methods.preference import PreferenceConfig, train_preference
from vlalign.training.paint import paint
from vlalign.training.train_config import TrainConfig


@dataclass(frozen=True)
class TypographicSizes:
    """Data and training sizes; ``quick`` shrinks everything for a smoke run."""

    n_pref: int = 2000
    n_reg: int = 2000
    n_eval: int = 600
    n_val: int = 300
    steps: int = 300
    head_steps: int = 300
    batch_size: int = 64
    head_batch_size: int = 128
    betas: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)
    control_t: tuple[float, ...] = tuple(x / 2 for x in range(-8, 9))
    probe_train: int = 2400
    probe_test: int = 1200

    @classmethod
    def quick(cls) -> "TypographicSizes":
        return cls(n_pref=96, n_reg=96, n_eval=48, n_val=48, steps=4, head_steps=10, batch_size=16, head_batch_size=32,
                   betas=(0.5, 2.0), control_t=(-1.0, 0.0, 1.0), probe_train=96, probe_test=48)


#: Per-method settings. IPO and KTO use the paper's (β, λ). For DPO the paper's β=1 saturates early here: the
#: written word leads the true class by several logits, and σ(−βh) stops pushing once h≈3/β; a GPU sweep on the
#: first mini world (β ∈ {0.3, 1}, lr ∈ {5e-4, 1e-3}, 300/800 steps) gave typographic 0.52 at β=1 and 0.64 at β=0.3
#: with the same clean accuracy. DPO's regularizer is the reverse KL(π_ref‖π_θ): a comparison fixed in advance over
#: eight validation draws (``benchmarks.typographic_variant``, seeds 10-17, README) kept clean accuracy on the
#: held-out classes closer to the pretrained model's (−0.5 vs −1.1 points) at the same typographic accuracy. On the
#: re-pretrained ``mini``, β ∈ {0.3, 0.1, 0.05} were compared over the same eight draws by a rule fixed before the
#: last five ran (the most draws meeting every per-draw DPO target of issue 13: reading effect ≤ 3 points and clean
#: accuracy within 1 point, in-domain and held-out): β=0.05 met them on 6, the others on 5 (README, "Does harder
#: DPO training reach the 80% target?"). Faster rates cost held-out clean accuracy and 600 steps change little, so
#: the learning rate and steps (for the full image tower) stay.
PO_SETTINGS = {
    "dpo": {"beta": 0.05, "lam": 1.0, "kl_direction": "ref_policy"},
    "ipo": {"beta": 0.01, "lam": 0.01},
    "kto": {"beta": 1.5, "lam": 0.01},
}
FULL_LR = 5e-4


class TypographicInputs(NamedTuple):
    """What every row of one run shares: its sizes, the mini world, the shipped ``mini`` (the reference every row
    starts from) and the preference triplets with their clean regularization images."""

    sizes: TypographicSizes
    world: MiniWorld
    reference: ContrastiveModel
    pref: PreferenceSet
    reg: RegularizationSet


def experiment_inputs(seed: int, quick: bool = False, sizes: TypographicSizes | None = None) -> TypographicInputs:
    """The inputs of ``vlalign experiment typographic --seed seed`` (``--quick`` sizes if ``quick``), built as the
    experiment builds them (it seeds torch's global generator with ``seed`` first), so that a row trained from them
    alone reproduces the experiment's. ``sizes``, when given, replaces the experiment's sizes (e.g. more preference
    data) and ``quick`` is then ignored."""
    sizes = sizes or (TypographicSizes.quick() if quick else TypographicSizes())
    torch.manual_seed(seed)
    world = MiniWorld()
    reference = load_model("mini")
    pref, reg = preference_sets(sizes, seed, world)
    return TypographicInputs(sizes, world, reference, pref, reg)


def preference_sets(sizes: TypographicSizes, seed: int, world: MiniWorld):
    """The experiment's preference triplets and clean regularization images for ``--seed seed`` (data seed 100 + seed,
    in-domain classes only)."""
    return typographic_preference_data(sizes.n_pref, sizes.n_reg, seed=100 + seed, classes=INDOMAIN_CLASSES,
                                       world=world)


def full_tower_loop(sizes: TypographicSizes, seed: int) -> TrainConfig:
    """The loop of the full-tower rows: BMA written into the model, EMA kept as the alternate (Table 5)."""
    return TrainConfig(steps=sizes.steps, batch_size=sizes.batch_size, lr=FULL_LR, seed=seed, averaging="bma",
                       extra_averaging=["ema"])


#: The experiment's test draw is seed TEST_DRAW_OFFSET + its seed (600 fresh images per split).
TEST_DRAW_OFFSET = 5000


def head_dpo_config() -> PreferenceConfig:
    """The linear-head DPO row's objective: the method's defaults (β = λ = 1, KL(π_θ‖π_ref)) on a head W = UΣVᵀ."""
    return PreferenceConfig(method="dpo", trainable="head")


def head_loop(sizes: TypographicSizes, seed: int) -> TrainConfig:
    """The loop of the linear rows: Materzynska+ and Defense-Prefix train with it as it is, the linear-head DPO
    with BMA added (:func:`head_dpo_loop`)."""
    return TrainConfig(steps=sizes.head_steps, batch_size=sizes.head_batch_size, seed=seed)


def head_dpo_loop(sizes: TypographicSizes, seed: int) -> TrainConfig:
    """The loop of the linear-head DPO row (and its β sweep): :func:`head_loop` with BMA."""
    return replace(head_loop(sizes, seed), averaging="bma")


#: The experiment's validation draw is seed VALIDATION_DRAW_OFFSET + its seed (``n_val`` in-domain images per split):
#: PAINT's α and the best PO method and baseline of the summary are chosen there, never on the test draw.
VALIDATION_DRAW_OFFSET = 4000


def _validation_accuracies(world: MiniWorld, n: int, seed: int):
    """A function: model -> its in-domain clean and typographic accuracy on the validation draw ``seed``."""
    clean = world.sample("indomain-clean", n, seed)
    typo = world.sample("indomain-typographic", n, seed)

    def accuracies(model: ContrastiveModel) -> dict[str, float]:
        return {"clean": zero_shot_evaluate(model, clean).accuracy,
                "typographic": zero_shot_evaluate(model, typo).accuracy}

    return accuracies


def run_typographic_experiment(out: str | Path, quick: bool = False, seed: int = 0) -> dict:
    """Train every method on the same preference data, evaluate on fresh seeds, write the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    sizes, world, reference, pref, reg = experiment_inputs(seed, quick)
    eval_seed = TEST_DRAW_OFFSET + seed
    evaluate = lambda model: evaluate_typographic(model, reference, sizes.n_eval, eval_seed, world)  # noqa: E731
    methods: dict[str, dict] = {}
    seconds: dict[str, float] = {}

    def timed(name: str, fn):
        start = time.perf_counter()
        result = fn()
        seconds[name] = time.perf_counter() - start
        print(f"[typographic] {name}: {seconds[name]:.0f} s", flush=True)
        return result

    validate = _validation_accuracies(world, sizes.n_val, VALIDATION_DRAW_OFFSET + seed)
    validation: dict[str, dict] = {}

    def record(name: str, model: ContrastiveModel) -> None:
        # Evaluate as soon as a model exists and keep a partial file, so an interrupted run still reports.
        methods[name] = evaluate(model)
        validation[name] = validate(model)
        atomic_write_json(out / "metrics.partial.json", {"methods": methods, "seconds": seconds})

    record("pretrained", reference)
    probe_seeds = (7100 + seed, 7200 + seed)
    probe = timed("linear_probe", lambda: object_probe(reference, world, n_train=sizes.probe_train,
                                                       n_test=sizes.probe_test, train_seed=probe_seeds[0],
                                                       test_seed=probe_seeds[1]))
    linear_probe = {**{split: row["probe"] for split, row in probe.items()}, "n_train": sizes.probe_train,
                    "n_test": sizes.probe_test, "train_seed": probe_seeds[0], "test_seed": probe_seeds[1]}
    train = full_tower_loop(sizes, seed)
    ce = timed("ce", lambda: train_preference(reference, pref, reg, PreferenceConfig(method="ce", trainable="full"),
                                              replace(train, extra_averaging=[]), progress=False))
    record("ce", ce.model)
    painted = timed("paint", lambda: paint(reference, ce.model, [i / 10 for i in range(11)],
                                           lambda model: sum(validate(model).values()) / 2))
    record("paint", painted.model)
    head_train = head_loop(sizes, seed)
    record("materzynska", timed("materzynska", lambda: train_materzynska(reference, pref, reg, head_train)))
    record("defense_prefix", timed("defense_prefix", lambda: train_defense_prefix(reference, pref, reg, head_train)))
    ema: dict[str, dict] = {}
    for method in PO_METHODS:
        cfg = PreferenceConfig(method=method, trainable="full", **PO_SETTINGS[method])
        result = timed(method, lambda: train_preference(reference, pref, reg, cfg, train, progress=False))
        record(method, result.model)
        ema[method] = evaluate(result.alternates["ema"])

    head_cfg = head_dpo_config()
    head_dpo_train = head_dpo_loop(sizes, seed)
    head = timed("dpo_head", lambda: train_preference(reference, pref, reg, head_cfg, head_dpo_train,
                                                      progress=False)).model
    control = control_sweep(head, world, sizes.control_t, sizes.n_eval, eval_seed)
    beta_sweep = {"beta": list(sizes.betas), "kl_clean": [], "typographic": []}
    for beta in sizes.betas:
        row = evaluate(train_preference(reference, pref, reg, replace(head_cfg, beta=beta), head_dpo_train,
                                        progress=False).model)
        beta_sweep["kl_clean"].append(row["kl_clean"])
        beta_sweep["typographic"].append(row["typographic"])

    summary = summarize(methods, control, validation)
    metrics = {"methods": {m: methods[m] for m in ROW_ORDER}, "control": control, "linear_probe": linear_probe,
               "bma_vs_ema": {m: {"bma": methods[m], "ema": ema[m]} for m in PO_METHODS},
               "beta_sweep": beta_sweep, "paint_alpha": painted.alpha,
               "head_dpo": {"orthogonality_error": head.head.orthogonality_error(), **evaluate(head)},
               "summary": summary, "seconds": seconds,
               "validation": {"seed": VALIDATION_DRAW_OFFSET + seed, "n": sizes.n_val,
                              "methods": {m: validation[m] for m in ROW_ORDER}},
               "settings": {"sizes": asdict(sizes), "po": PO_SETTINGS, "full_lr": FULL_LR, "seed": seed,
                            "eval_seed": eval_seed, "quick": quick}}
    atomic_write_json(out / "metrics.json", metrics)
    (out / "metrics.partial.json").unlink(missing_ok=True)
    write_plots(methods, control, beta_sweep, head, out)
    write_report(out, "experiment-typographic", report_text(metrics),
                 run_info(command=command(quick, seed), seconds=time.perf_counter() - began))
    print(methods_table(methods))
    print(methods_table(methods, "_heldout"))
    return metrics
