"""AdvLoRA for image-text retrieval in the retrieval world (``vlalign experiment advlora``).

Starting from the shipped retrieval MiniCLIP (``mini-retrieval``), eight rows are fine-tuned on fresh
retrieval-world training images through the one loop (:func:`vlalign.training.loop.fit` driving
:class:`vlalign.training.methods.advlora.AdvLoRAMethod`) and evaluated on a fresh 1,000-image test gallery
(5,000 captions, a seed no pretraining or selection run has seen):

- ``full_clean`` / ``full_adversarial``: the whole image tower, clean or ℓ∞ PGD-3 adversarial training;
- ``lora_clean`` / ``lora_adversarial``: plain LoRA (peft's init, fixed scale) on the six convolutions of the image
  tower's stem (:data:`STEM_CONVS`, rank 5), clean or adversarial;
- ``advlora``: LoRA with the three AdvLoRA parts (clustering init, parameter alignment, adaptive α), adversarial;
- ``advlora_no_cluster_init``, ``advlora_no_alignment``, ``advlora_no_adaptive_alpha``: AdvLoRA minus one part.
  Without clustering init the alignment penalty is taken against the initial product (``alignment_target:
  init``, i.e. ‖ΔW‖²/‖W₀‖²): the paper's ‖W₀ − ΔW‖² from ΔW = 0 would pull the effective weight towards 2·W₀
  (see :mod:`vlalign.models.adapters.advlora`).

Every row reports its trainable parameters (count and fraction of the whole model), Recall@1/5/10 in both
directions and their mean mR (:func:`vlalign.evaluation.retrieval.retrieval_recall`) clean, under white-box
PGD-10 and FGSM at the training ε (2/255), and under a transfer attack: PGD-10 crafted on the pretrained
``mini-retrieval`` (the public model every row starts from; the attacker never queries the fine-tuned model),
the same images for every row. Attacks perturb images only, against the gallery's caption centroids
(:mod:`vlalign.evaluation.retrieval_eval`). Also: AdvLoRA's mean α over training (plot), a rank sweep
r ∈ {1, 2, 4, 8, 16} of AdvLoRA's mR under PGD (the paper's open question 2) and a compound attack — a misleading
written word (:func:`vlalign.data.retrieval_world.write_misleading_words`) plus ℓ∞ PGD on the same image (open
question 3).

Hyper-parameters (a learning rate per family: what is trained, and whether on clean or adversarial images) were
chosen on the **val** split by ``vlalign experiment advlora-select`` (:mod:`vlalign.experiments.advlora_select`; a
clean family by its val clean mR, an adversarial one by its val mR under PGD-10), never on the test gallery; the
chosen values are the defaults of :class:`AdvLoRAExperiment` below and the measured grid is in the README.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlalign.attacks.fgsm import FGSM
from vlalign.attacks.pgd import PGD
from vlalign.attacks.threat_model import parse_eps
from vlalign.config import NumberText, check_range, config_from_dict, config_to_dict, option
from vlalign.data.retrieval_set import RetrievalSet
from vlalign.data.retrieval_world import RetrievalWorld, write_misleading_words
from vlalign.evaluation.retrieval_eval import adversarial_pixels, evaluate_retrieval, recall_of_pixels, robust_retrieval
from vlalign.experiments.advlora_report import (CONDITIONS, command_line, main_table, masking_warnings,
                                                 report_markdown, targets, write_plots)
from vlalign.io import atomic_write_json
from vlalign.models.adapters.advlora import apply_advlora, trainable_parameter_count
from vlalign.models.loading import load_model, save_model
from vlalign.processes import run_in_workers
from vlalign.reporting.run_report import run_info, write_report
from vlalign.reporting.training import read_metrics_csv
from vlalign.training.loop import fit
from vlalign.training.methods.advlora import AdvLoRAConfig, AdvLoRAMethod, train_only
from vlalign.training.train_config import TrainConfig

#: Row key -> the AdvLoRAConfig fields that make it (rank, lr and the shared settings come from the experiment).
ROWS: dict[str, dict[str, Any]] = {
    "full_clean": {"trainable": "full", "adversarial": False},
    "full_adversarial": {"trainable": "full"},
    "lora_clean": {"trainable": "lora", "adversarial": False},
    "lora_adversarial": {"trainable": "lora"},
    "advlora": {"trainable": "advlora"},
    "advlora_no_cluster_init": {"trainable": "advlora", "cluster_init": False, "alignment_target": "init"},
    "advlora_no_alignment": {"trainable": "advlora", "alignment_weight": 0.0},
    "advlora_no_adaptive_alpha": {"trainable": "advlora", "adaptive_alpha": False},
}
#: Where the LoRA rows adapt MiniCLIP's image tower: the six convolutions of its stem. Chosen on val (README,
#: AdvLoRA section): attention projections alone (the adapters' default) left adversarial LoRA and AdvLoRA within a
#: point of the pretrained model under PGD; adding them to the stem convolutions bought 0.4 point of val PGD mR for
#: 3,072 more parameters, which the ≤ 5% budget spends better on rank 5 in the stem.
STEM_CONVS = ("stem.0", "stem.3", "stem.6", "stem.9", "stem.12", "stem.15")
#: Rows whose compound attack (word + PGD) is measured (each costs a PGD run over the whole gallery).
COMPOUND_ROWS = ("lora_clean", "lora_adversarial", "full_adversarial", "advlora")
#: Rows trained by the val selection, one per learning-rate family.
SELECTION_ROWS = ("full_clean", "full_adversarial", "lora_clean", "lora_adversarial", "advlora")


def family(row: str) -> str:
    """The learning-rate family of a row: what it trains (``full``, ``lora``, ``advlora``), with ``_clean`` for
    clean training: a rate that suits adversarial training can wreck clean training (LoRA at 4e-2: 40% val clean mR)."""
    return ROWS[row]["trainable"] + ("" if ROWS[row].get("adversarial", True) else "_clean")


def selection_metric(row: str) -> str:
    """What the val selection maximizes for ``row``'s family: ``clean`` mR for clean training, else ``pgd`` mR."""
    return "pgd" if ROWS[row].get("adversarial", True) else "clean"


#: The learning-rate families, in table order.
FAMILIES = tuple(family(row) for row in SELECTION_ROWS)


def _default_train() -> TrainConfig:
    return TrainConfig(steps=500, batch_size=64, warmup_fraction=0.1, checkpoint_every=100, log_every=5)


@dataclass
class AdvLoRAExperiment:
    """Sizes and settings of ``vlalign experiment advlora`` (and of its val selection)."""

    model: str = option("mini-retrieval", "the pre-trained model every row starts from (also the transfer surrogate)")
    train_images: int = option(4000, "fine-tuning images (retrieval world, split train), five captions each")
    train_seed: int = option(7, "seed of the fine-tuning images (pretraining used seed 0)")
    val_images: int = option(500, "val images for the hyper-parameter selection")
    val_seed: int = option(0, "seed of the val images")
    test_images: int = option(1000, "test gallery images (5 captions each)")
    test_seed: int = option(2, "seed of the test gallery (the shipped model's own evaluation used seed 1)")
    eps: NumberText = option("2/255", "ℓ∞ radius of the training and evaluation attacks")
    train_attack_steps: int = option(3, "PGD steps of adversarial training (PGD-3)")
    eval_steps: int = option(10, "PGD steps of the white-box, transfer and compound evaluations (PGD-10)")
    attack_batch: int = option(100, "images attacked at once in the evaluation")
    rank: int = option(5, "LoRA rank of the LoRA and AdvLoRA rows (the highest within 5% of the image tower's "
                          "parameters with the default placement)")
    rank_pattern: dict[str, int] = option(help="per-layer ranks of the LoRA rows (not the sweep) overriding rank, "
                                                "e.g. {stem.0: 16}", factory=dict)
    image_targets: list[str] | None = option(help="nn.Linear / nn.Conv2d layers of the image tower the LoRA rows "
                                                  "adapt (null: the backend's default, the attention projections)",
                                             factory=lambda: list(STEM_CONVS))
    ranks: list[int] = option(help="ranks of the AdvLoRA rank sweep (the rows' own rank is always added)",
                              factory=lambda: [1, 2, 4, 8, 16])
    lr: dict[str, float] = option(help="peak learning rate per family (full_clean, full, lora_clean, lora, "
                                       "advlora), chosen on val",
                                  factory=lambda: {"full_clean": 1e-2, "full": 1e-2, "lora_clean": 1e-2, "lora": 4e-2,
                                                   "advlora": 4e-2})
    lr_grid: dict[str, list[float]] = option(help="learning rates tried per family by the val selection",
                                             factory=lambda: {"full_clean": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
                                                              "full": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
                                                              "lora_clean": [1e-3, 5e-3, 1e-2, 2e-2, 4e-2],
                                                              "lora": [1e-3, 5e-3, 1e-2, 2e-2, 4e-2, 8e-2],
                                                              "advlora": [1e-3, 5e-3, 1e-2, 2e-2, 4e-2, 8e-2]})
    full_parameters: list[str] | None = option(None, "image-tower parameter prefixes the full rows train (null: all)")
    alignment_weight: float = option(0.1, "λ of AdvLoRA's parameter-alignment penalty")
    alpha_lr_scale: float = option(0.0025, "AdvLoRA's α's learning rate as a multiple of its row's, chosen on val")
    compound_seed: int = option(5, "seed of the misleading words of the compound attack")
    train: TrainConfig = option(help="loop settings shared by every row (lr: see lr)", factory=_default_train)

    def __post_init__(self) -> None:
        for name in ("train_images", "val_images", "test_images", "train_attack_steps", "eval_steps", "attack_batch",
                     "rank"):
            check_range(name, getattr(self, name), 1)
        parse_eps(self.eps)
        if not self.ranks or any(r < 1 for r in self.ranks):
            raise ValueError(f"ranks must be a non-empty list of ranks >= 1, got {self.ranks}")
        for what in ("lr", "lr_grid"):
            if set(getattr(self, what)) != set(FAMILIES):
                raise ValueError(f"{what} must have exactly the keys {', '.join(FAMILIES)}, got "
                                 f"{sorted(getattr(self, what))}")
        check_range("alignment_weight", self.alignment_weight, 0)
        check_range("alpha_lr_scale", self.alpha_lr_scale, 0, low_open=True)
        for name, rank in self.rank_pattern.items():
            check_range(f"rank_pattern[{name}]", rank, 1)
        if self.full_parameters is not None and not self.full_parameters:
            raise ValueError("full_parameters must be null (the whole tower) or a non-empty list of name prefixes")


#: The full run: 21.3 min with two workers on the idle 2-core machine; the selection's 29 runs 32 min (README).
FULL: dict[str, Any] = {}
#: A smoke run: every part runs on a few images for a few steps; nothing is meant to be robust.
QUICK: dict[str, Any] = {"train_images": 48, "val_images": 16, "test_images": 24, "eval_steps": 2, "attack_batch": 12,
                         "ranks": [1], "lr_grid": {"full_clean": [1e-4], "full": [1e-4], "lora_clean": [1e-3, 3e-3],
                                                   "lora": [3e-3], "advlora": [1e-3, 3e-3]},
                         "train": {"steps": 3, "batch_size": 16, "checkpoint_every": 3, "log_every": 1}}


def experiment_config(quick: bool = False, seed: int = 0) -> AdvLoRAExperiment:
    """The settings of the full run (or of ``--quick``), with the loop seeded by ``seed``."""
    data = copy.deepcopy(QUICK if quick else FULL)
    data.setdefault("train", {})["seed"] = seed
    defaults = config_to_dict(_default_train())
    data["train"] = {**defaults, **data["train"]}
    return config_from_dict(AdvLoRAExperiment, data, f"experiment advlora{' --quick' if quick else ''}")


def sweep_ranks(config: AdvLoRAExperiment) -> list[int]:
    """The ranks of the rank sweep: ``config.ranks`` and the rows' own rank, ascending."""
    return sorted({*config.ranks, config.rank})


def row_config(row: str, config: AdvLoRAExperiment, rank: int | None = None) -> AdvLoRAConfig:
    """The AdvLoRAConfig of ``row`` under the experiment's shared settings."""
    fields = dict(ROWS[row])
    if fields["trainable"] == "advlora":
        fields.setdefault("alignment_weight", config.alignment_weight)
        fields.setdefault("alpha_lr_scale", config.alpha_lr_scale)
    placement = "full_parameters" if fields["trainable"] == "full" else "image_targets"  # what the row trains
    fields[placement] = getattr(config, placement)
    if fields["trainable"] != "full" and rank is None:
        fields["rank_pattern"] = config.rank_pattern
    return AdvLoRAConfig(rank=config.rank if rank is None else rank, eps=config.eps,
                         attack_steps=config.train_attack_steps, seed=config.train.seed, **fields)


def check_row(row: str, config: AdvLoRAExperiment, model: Any) -> None:
    """Raise ``ValueError`` now, before any data is rendered, if ``row``'s placement settings (``full_parameters``,
    ``image_targets``, ``rank_pattern``) do not fit ``model`` (which is left untouched)."""
    made = row_config(row, config)
    if made.trainable != "full":
        apply_advlora(copy.deepcopy(model), made.adapter_spec())
    elif made.full_parameters is not None:
        train_only(copy.deepcopy(model).image_encoder, made.full_parameters)


def build_sets(config: AdvLoRAExperiment, splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, RetrievalSet]:
    """The fine-tuning, val and test sets (and ``test_words``, the test gallery with misleading words)."""
    world = RetrievalWorld()
    workers = 2 if (os.cpu_count() or 1) > 1 else 1
    sizes = {"train": (config.train_images, config.train_seed), "val": (config.val_images, config.val_seed),
             "test": (config.test_images, config.test_seed)}
    sets = {split: world.sample(split, *sizes[split], workers=workers) for split in splits}
    if "test" in sets:
        sets["test_words"] = write_misleading_words(sets["test"], config.compound_seed)[0]
    return sets


# ------------------------------------------------------------------------------------------------- one job
_SHARED: dict[str, Any] = {}


def _init_worker(shared: dict[str, Any]) -> None:
    """Install what every job of a run reads (its config, rendered sets and output folder) in this process."""
    _SHARED.clear()
    _SHARED.update(shared)


def _attacks(config: AdvLoRAExperiment) -> dict[str, Any]:
    eps = parse_eps(config.eps)
    return {"pgd": PGD(eps, steps=config.eval_steps), "fgsm": FGSM(eps)}


def evaluate_model(model, config: AdvLoRAExperiment, data: RetrievalSet, conditions: tuple[str, ...],
                   words: RetrievalSet | None = None) -> dict[str, Any]:
    """Recall of ``model`` on ``data`` clean and under each white-box attack of ``conditions`` (``pgd``,
    ``fgsm``); with ``words`` (the same gallery with misleading words) also the compound attack's four cells."""
    attacks = _attacks(config)
    out: dict[str, Any] = {}
    for condition in conditions:
        if condition == "clean":
            out["clean"] = evaluate_retrieval(model, data)
        else:
            out[condition] = robust_retrieval(model, data, attacks[condition], batch_size=config.attack_batch)
    if words is not None:
        out["compound"] = {"word": evaluate_retrieval(model, words)["mR"],
                           "word_pgd": robust_retrieval(model, words, attacks["pgd"], batch_size=config.attack_batch)["mR"]}
    return out


def train_row(row: str, config: AdvLoRAExperiment, base, data: RetrievalSet, out: Path, lr: float,
              rank: int | None = None, progress: bool = False) -> tuple[Any, AdvLoRAMethod, dict[str, Any]]:
    """Fine-tune ``base`` as ``row`` through the loop into ``out``; returns (merged plain model, method, facts)."""
    method = AdvLoRAMethod(base, data, row_config(row, config, rank))
    trainable = trainable_parameter_count(method.model)
    train = copy.deepcopy(config.train)
    train.lr = lr
    result = fit(method, train, out, run_config={"experiment": "advlora", "row": row, "data": {
        "train_images": config.train_images, "train_seed": config.train_seed}}, progress=progress)
    columns = read_metrics_csv(out / "metrics.csv") if (out / "metrics.csv").is_file() else {}
    facts = {"trainable_params": trainable, "trainable_fraction": trainable / sum(p.numel() for p in base.parameters()),
             "train_seconds": result.seconds, "lr": lr,
             "rank": None if method.config.trainable == "full" else method.config.rank,
             "rank_pattern": method.config.rank_pattern or None,
             "alpha": {"step": columns.get("step", []), "alpha_mean": columns["alpha_mean"]}
             if "alpha_mean" in columns else None}
    return result.model, method, facts


def _job(job: tuple) -> tuple[str, dict[str, Any]]:
    """One unit of work in a worker, ``(kind, row[, rank[, lr]])``: train a row and evaluate it (``kind`` = ``row``,
    ``sweep`` or ``select``), or craft the transfer images on the pretrained model and evaluate it (``kind`` =
    ``pretrained``). Returns the job's name and its facts."""
    kind, row, rank, lr = (*job, None, None)[:4]
    config: AdvLoRAExperiment = _SHARED["config"]
    sets: dict[str, RetrievalSet] = _SHARED["sets"]
    out: Path = _SHARED["out"]
    began = time.perf_counter()
    base = load_model(config.model)
    if kind == "pretrained":
        facts = evaluate_model(base, config, sets["test"], ("clean", "pgd", "fgsm"), sets["test_words"])
        # The last iterate (highest surrogate loss), not the first one that fools the surrogate: it transfers better.
        crafter = PGD(parse_eps(config.eps), steps=config.eval_steps, keep="last")
        facts["transfer_pixels"] = adversarial_pixels(base, sets["test"], crafter, batch_size=config.attack_batch, seed=1)
        facts["seconds"] = time.perf_counter() - began
        return row, facts
    name = row if kind != "sweep" else f"{row}_r{rank}"
    lr = config.lr[family(row)] if lr is None else lr
    if kind == "select":
        name = f"{row}_lr{lr:g}"
    model, method, facts = train_row(row, config, base, sets["train"], out / "runs" / name, lr, rank)
    evaluated = time.perf_counter()
    if kind == "row":
        words = sets["test_words"] if row in COMPOUND_ROWS else None
        facts.update(evaluate_model(model, config, sets["test"], ("clean", "pgd", "fgsm"), words))
        folder = out / "models" / name
        save_model(model, folder, info={"experiment": "advlora", "row": name, "base_model": config.model})
        if method.adapter_export is not None:
            method.save_peft_adapter(folder / "peft")
    elif kind == "sweep":
        facts.update(evaluate_model(model, config, sets["test"], ("clean", "pgd")))
    else:
        facts.update(evaluate_model(model, config, sets["val"], ("clean", "pgd")))
    facts["eval_seconds"] = time.perf_counter() - evaluated
    return name, facts


def run_jobs(jobs: list[tuple], shared: dict[str, Any], workers: int) -> dict[str, dict[str, Any]]:
    """Run :func:`_job` over ``jobs`` in ``workers`` processes that share ``shared`` (config, sets, out); by name."""
    done = run_in_workers(_job, jobs, (), workers, "AdvLoRA jobs", initializer=_init_worker, initargs=(shared,))
    return dict(done.values())


def default_workers(quick: bool) -> int:
    """Parallel processes: one per CPU core, at most 2 (1 for ``--quick``)."""
    return 1 if quick else max(1, min(2, os.cpu_count() or 1))


# ------------------------------------------------------------------------------------------------ the run
def _row_metrics(facts: dict[str, Any]) -> dict[str, Any]:
    keys = ("trainable_params", "trainable_fraction", *CONDITIONS)
    return {**{k: facts[k] for k in keys}, "seconds": facts["train_seconds"], "eval_seconds": facts["eval_seconds"],
            "lr": facts["lr"], "rank": facts["rank"], "rank_pattern": facts["rank_pattern"]}


def set_up_run(out: str | Path, quick: bool, seed: int, workers: int | None,
               splits: tuple[str, ...]) -> tuple[Path, AdvLoRAExperiment, int, dict[str, RetrievalSet]]:
    """The output folder (created), the experiment's config, the number of workers and the rendered ``splits``."""
    (out := Path(out)).mkdir(parents=True, exist_ok=True)
    config = experiment_config(quick, seed)
    workers = default_workers(quick) if workers is None else workers
    check_range("workers", workers, 1)
    return out, config, workers, build_sets(config, splits)


def run_advlora_experiment(out: str | Path, quick: bool = False, seed: int = 0, workers: int | None = None) -> dict:
    """Train and evaluate the eight rows, the rank sweep and the compound attack; write ``metrics.json``, the
    plots and the report into ``out``. Returns the metrics (recalls as fractions)."""
    began = time.perf_counter()
    out, config, workers, sets = set_up_run(out, quick, seed, workers, ("train", "test"))
    rendered = time.perf_counter() - began
    # Longest first, so that two workers finish together: adversarial rows, then the sweep, then clean rows.
    order = ["full_adversarial", "advlora", "advlora_no_cluster_init", "advlora_no_alignment",
             "advlora_no_adaptive_alpha", "lora_adversarial"]
    jobs: list[tuple] = [("pretrained", "pretrained")] + [("row", r) for r in order]
    # The sweep is uniform in rank: the rows' own point is the advlora row unless that row has per-layer ranks.
    own = () if config.rank_pattern else (config.rank,)
    jobs += [("sweep", "advlora", r) for r in sweep_ranks(config) if r not in own]
    jobs += [("row", "full_clean"), ("row", "lora_clean")]
    results = run_jobs(jobs, {"config": config, "sets": sets, "out": out}, workers)

    pretrained = results.pop("pretrained")
    transfer_pixels = pretrained.pop("transfer_pixels")
    for name in ROWS:
        model = load_model(out / "models" / name)
        results[name]["transfer"] = recall_of_pixels(model, transfer_pixels, sets["test"])
    pretrained["transfer"] = recall_of_pixels(load_model(config.model), transfer_pixels, sets["test"])
    base = load_model(config.model)
    methods = {name: _row_metrics(results[name]) for name in ROWS}
    sweep = {}
    for rank in sweep_ranks(config):
        facts = results["advlora"] if rank in own else results[f"advlora_r{rank}"]
        sweep[str(rank)] = {"trainable_params": facts["trainable_params"],
                            "trainable_fraction": facts["trainable_fraction"], "clean": facts["clean"],
                            "pgd": facts["pgd"], "seconds": facts["train_seconds"]}
    compound = {name: {"clean": facts["clean"]["mR"], "word": facts["compound"]["word"],
                       "pgd": facts["pgd"]["mR"], "word_pgd": facts["compound"]["word_pgd"]}
                for name, facts in [("pretrained", pretrained), *((n, results[n]) for n in COMPOUND_ROWS)]}
    alpha = {name: results[name]["alpha"] for name in ROWS if results[name]["alpha"] is not None}
    alpha.update({f"advlora_r{r}": results[f"advlora_r{r}"]["alpha"] for r in sweep_ranks(config) if r not in own})
    total = time.perf_counter() - began
    metrics = {
        "methods": methods,
        "rank_sweep": sweep,
        "compound": compound,
        "pretrained": {k: pretrained[k] for k in CONDITIONS} | {"total_params": sum(p.numel() for p in base.parameters())},
        "alpha": alpha,
        "targets": targets(methods),
        "warnings": masking_warnings(methods),
        "settings": {"quick": quick, "seed": seed, "workers": workers, **config_to_dict(config),
                     "seconds": {"total": total, "data": rendered, "pretrained": pretrained["seconds"],
                                 **{n: results[n]["train_seconds"] + results[n]["eval_seconds"] for n in results}}},
    }
    atomic_write_json(out / "metrics.json", metrics)
    write_plots(metrics, out)
    write_report(out, "experiment-advlora", report_markdown(metrics), run_info(command=command_line("advlora", quick, seed),
                                                                        seconds=total))
    print(main_table(metrics))
    return metrics
