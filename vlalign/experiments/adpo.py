"""AdPO in the mini world (``vlalign experiment adpo``): preference-optimized vision encoders beside TeCoA and FARE,
on a generative VLM and transferred into a second one.

Rows (``metrics.json`` ``methods``): ``original`` (the VLM as shipped); ``tecoa`` and ``fare`` (the MiniCLIP tower
fine-tuned by :class:`~vlalign.training.methods.robust.RobustFinetune` at the same ε, its image tower put into the
VLM); ``adpo_dpo``, ``adpo_ipo``, ``adpo_kto``, ``adpo_simpo`` (AdPO with each preference loss, λ = 1);
``adpo_scheduled`` (DPO, λ cosine from 2 to 0.5: the paper's open question 2) and ``adpo_no_la`` (DPO, λ = 0),
all with online pairs and the response attack (``attack_on: policy``, ``attack_objective: response``: every step
attacks the model being trained, raising the NLL of y_w). ``adpo_dpo_reference`` (DPO with x_adv from the
embedding attack and y_l computed once on the frozen reference: the paper's description taken literally) runs on
request (:data:`EXTRA_ROWS`). ``transfer`` holds the same keys for the second VLM (``mini-vlm-large``) with each row's
encoder put in unchanged.

The target check (``confirm``): the table's 200 attacked questions give one accuracy near 50% a standard error of
3.5 points, too coarse for the issue's 3-point margin (and for picking the best AdPO row), so the best AdPO row and
FARE are re-scored clean and under APGD-CE at 4/255 on 1,000 fresh questions of another seed (every clean-correct
one attacked, from the encoders each row saved), and the AdPO-vs-FARE target is decided there on the paired
per-question differences (:mod:`vlalign.evaluation.uncertainty`). The best AdPO row (``selection``) is picked
before that, each AdPO row scored the same way on 1,000 validation questions (the seed the learning rates were
chosen on), so neither the table's questions nor the check's choose it.

Columns: clean exact match on fresh questions, CIDEr-D on fresh captions, accuracy under untargeted APGD-CE at
2/255 and 4/255 (per sample the worst of clean and attacked, as :func:`robust_evaluate_vlm` scores it), targeted
APGD success at 4/255 (a wrong answer of the same type), and training seconds per optimizer step (the loop only;
AdPO's one-off precomputation — y_w and the reference's scores, plus x_adv and y_l for ``attack_on: reference`` —
is reported beside it, ``precompute_seconds``). All trainings use the same
loop settings (steps, batch, AdamW) and ε; each family's peak learning rate (``lr``: TeCoA, FARE, AdPO) was chosen
by the same rule on validation questions of a seed that neither the table nor the target check uses. The rows are
independent, so the full run spreads them over two processes (``workers``, one torch thread each: both cores of the
2-core machine); they score exactly what one process scores (tested). ``--quick`` builds two tiny random VLMs on a
tiny tower from configs (no shipped asset needed): every part runs, nothing is meant to be accurate or robust.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from vlalign.data.datasets import TensorImageDataset
from vlalign.data.mini_world import MiniWorld, vocabulary
from vlalign.data.vqa import MiniCaptions, MiniVQA, vlm_vocabulary
from vlalign.experiments.adpo_eval import EvalSet, Questions, confirm_scores, evaluate_row
from vlalign.experiments.adpo_report import report_from_run, results_table
from vlalign.experiments.adpo_targets import CONFIRM_EPS, check_question_seeds, most_robust, targets
from vlalign.processes import run_in_workers
from vlalign.io import atomic_write_json, save_tensors
from vlalign.pipelines.runs import read_json_object
from vlalign.models.checkpoint import load_state_checked, load_tensors
from vlalign.models.loading import load_model
from vlalign.models.mini_clip import MiniCLIP, MiniCLIPConfig
from vlalign.models.mini_vlm import MiniVLM, mini_vlm_from_clip
from vlalign.models.vlm_loading import load_vlm
from vlalign.reporting.run_report import run_info, write_report
from vlalign.training.loop import fit
from vlalign.training.methods.adpo import AdPO, AdPOConfig, PromptedImages
from vlalign.training.methods.robust import RobustConfig, RobustFinetune
from vlalign.training.train_config import TrainConfig

ROWS = ("original", "tecoa", "fare", "adpo_dpo", "adpo_ipo", "adpo_kto", "adpo_simpo", "adpo_scheduled", "adpo_no_la")
#: Rows the Python API runs on request (``rows=``) and ``benchmarks/adpo_variant.py`` measures, beside :data:`ROWS`.
EXTRA_ROWS = ("adpo_dpo_reference",)
#: AdPO rows -> their config fields (beside eps, attack steps and the run's ``attack_on`` and ``attack_objective``,
#: which a row may override).
ADPO_ROWS: dict[str, dict[str, Any]] = {
    "adpo_dpo": {"loss": "dpo"}, "adpo_ipo": {"loss": "ipo"}, "adpo_kto": {"loss": "kto"},
    "adpo_simpo": {"loss": "simpo"},
    "adpo_scheduled": {"loss": "dpo", "la_schedule": "cosine", "la_weight_start": 2.0, "la_weight": 0.5},
    "adpo_no_la": {"loss": "dpo", "la_weight": 0.0},
    # the paper's description taken literally: x_adv (the embedding attack) and y_l once, on the frozen reference
    "adpo_dpo_reference": {"loss": "dpo", "attack_on": "reference", "attack_objective": "embedding"},
}
#: Each trained row's image tower, saved in its run folder (the confirmation reloads it).
ENCODER_FILE = "encoder.safetensors"

#: The full run. The loop settings are FARE's of ``vlalign experiment robust`` at batch 32.
FULL: dict[str, Any] = {
    "vlm": "mini-vlm", "transfer_vlm": "mini-vlm-large", "clip": "mini",
    "eps": "4/255", "attack_steps": 10,
    #: AdPO's training attack for every row that does not set its own (``AdPOConfig.attack_on`` and
    #: ``attack_objective``): every step attacks the current model, maximizing the NLL of y_w
    "attack_on": "policy", "attack_objective": "response",
    "train": {"steps": 150, "batch_size": 32, "weight_decay": 1e-4, "warmup_fraction": 0.1,
              "checkpoint_every": 50, "log_every": 5},
    #: peak learning rate per family: the one of {3e-4, 6e-4, 1e-3, 2e-3} (FARE also 4e-3) with the highest APGD 4/255
    #: accuracy on validation questions (seed 4345; ties to the lower rate), by ``benchmarks.adpo_variant`` (README)
    "lr": {"tecoa": 6e-4, "fare": 1e-3, "adpo": 6e-4},
    #: AdPO's 3,840 + 960 = 4,800 prompts: each image once, as many as TeCoA/FARE see (README: against 2,000, 5 seeds)
    "data": {"questions": 3840, "captions": 960, "seed": 500, "robust_images": 4800, "robust_seed": 10000},
    "eval": {"questions": 400, "captions": 100, "seed": 4343, "attack_questions": 200, "targeted": 100,
             "steps": 20, "steps_check": True},
    #: Which AdPO row is the best, the one the target check compares with FARE: the highest APGD-CE 4/255 accuracy
    #: (ties: clean) on these validation questions (the ones the learning rates were chosen on), scored as the check
    #: scores; ``questions: 0`` picks on the table's questions instead.
    "select": {"questions": 1000, "seed": 4345},
    #: The target check: the best AdPO row and FARE, re-scored clean and under APGD-CE at 4/255 on this many fresh
    #: questions of another seed (every clean-correct one attacked, ``eval.steps`` steps), paired.
    "confirm": {"questions": 1000, "seed": 4344},
    "max_new_tokens": 24,
    #: processes the rows are spread over (one torch thread each): both cores of the 2-core machine
    "workers": 2,
}
#: A smoke run on tiny random models.
QUICK: dict[str, Any] = {
    **FULL, "vlm": "tiny", "transfer_vlm": "tiny-large", "clip": "tiny", "attack_steps": 2,
    "train": {**FULL["train"], "steps": 2, "batch_size": 4, "checkpoint_every": 2, "log_every": 1},
    "data": {"questions": 6, "captions": 2, "seed": 500, "robust_images": 8, "robust_seed": 10000},
    "eval": {"questions": 8, "captions": 4, "seed": 4343, "attack_questions": 8, "targeted": 4, "steps": 2,
             "steps_check": False},
    "select": {"questions": 8, "seed": 4345}, "confirm": {"questions": 8, "seed": 4344},
    "max_new_tokens": 6, "workers": 1,
}
#: The tiny tower of ``--quick`` (32-pixel images, one block).
TINY_TOWER = dict(image_size=32, stem_channels=(8, 16, 32), vision_width=32, vision_layers=1, vision_heads=2,
                  text_width=32, text_layers=1, text_heads=2, embed_dim=16)


def tiny_models(seed: int = 0) -> tuple[MiniCLIP, MiniVLM, MiniVLM]:
    """``--quick``'s models, built from configs: a random tiny MiniCLIP and two different random VLMs on its tower."""
    torch.manual_seed(seed)
    clip = MiniCLIP(MiniCLIPConfig(**TINY_TOWER, vocab=vocabulary()))
    torch.manual_seed(seed + 1)
    small = mini_vlm_from_clip(clip, vlm_vocabulary(), hidden_size=32, layers=1, heads=2, intermediate_size=64)
    torch.manual_seed(seed + 2)
    large = mini_vlm_from_clip(clip, vlm_vocabulary(), hidden_size=48, layers=2, heads=2, intermediate_size=96)
    return clip.eval(), small.eval(), large.eval()


def _models(settings: dict, seed: int) -> tuple[MiniCLIP, MiniVLM, MiniVLM | None]:
    if settings["clip"] == "tiny":
        clip, vlm, large = tiny_models(seed)
        return clip, vlm, large if settings["transfer_vlm"] else None
    clip = load_model(settings["clip"])
    vlm = load_vlm(settings["vlm"])
    large = load_vlm(settings["transfer_vlm"]) if settings["transfer_vlm"] else None
    if not isinstance(clip, MiniCLIP) or not isinstance(vlm, MiniVLM) or not isinstance(large, (MiniVLM, type(None))):
        raise ValueError("the AdPO experiment needs a MiniCLIP and two MiniVLMs on its tower")
    return clip, vlm, large


def family(row: str) -> str:
    """The learning-rate family of a row: ``tecoa``, ``fare`` or ``adpo`` (every AdPO row); ``original`` trains
    nothing and has none."""
    if row in ("tecoa", "fare"):
        return row
    if row in ADPO_ROWS:
        return "adpo"
    raise ValueError(f"row {row!r} trains nothing; expected one of tecoa, fare, {', '.join(ADPO_ROWS)}")


def _loop(settings: dict, seed: int, row: str) -> TrainConfig:
    return TrainConfig(**settings["train"], lr=settings["lr"][family(row)], seed=seed)


def confirm_row(row: str, settings: dict, seed: int, out: Path) -> dict:
    """The target check of one row the run has trained (its encoder saved in ``out/runs/<row>``): clean exact match
    and APGD-CE accuracy at 4/255 (worst case per question) on ``settings["confirm"]`` fresh questions, every
    clean-correct one attacked, with the per-question scores that the paired comparison reads."""
    shared = _shared(settings, seed)
    spec = settings["confirm"]
    key = (spec["questions"], spec["seed"])
    if shared.get("confirm_key") != key:
        shared.update(confirm_key=key, confirm_set=Questions(*key))
    questions: Questions = shared["confirm_set"]
    model = copy.deepcopy(shared["vlm"])
    if row != "original":
        path = out / "runs" / row / ENCODER_FILE
        load_state_checked(model.vision, load_tensors(path), path)
    return confirm_scores(model, questions, CONFIRM_EPS, settings["eval"]["steps"], spec["seed"])


# ------------------------------------------------------------------------------------------------ training

def train_robust_tower(method: str, clip: MiniCLIP, settings: dict, seed: int, out: Path, progress: bool
                       ) -> tuple[MiniCLIP, dict]:
    """TeCoA or FARE on the MiniCLIP through the one loop, at the experiment's ε; returns the model and timing."""
    spec = settings["data"]
    images = MiniWorld().sample("clean", spec["robust_images"], spec["robust_seed"])
    data = TensorImageDataset(images.images, label=images.labels)
    finetune = RobustFinetune(clip, data, images.classnames, RobustConfig(method=method, eps=settings["eps"],
                                                                         attack_steps=settings["attack_steps"]))
    loop = _loop(settings, seed, method)
    result = fit(finetune, loop, out, run_config={"experiment": "adpo", "row": method}, progress=progress)
    trained = loop.steps - result.start_step
    timing = {"step_seconds": result.seconds / trained if trained else None, "steps": loop.steps}
    return result.model, _kept_timing(out, timing, result.already_finished)


def _kept_timing(out: Path, timing: dict, already_finished: bool) -> dict:
    """A row's timing, written beside its run; a finished run that is loaded, not trained, reports the timing it
    recorded when it was trained (a resumed run times only the steps it trained)."""
    path = out / "timing.json"
    recorded = read_json_object(path) if already_finished else {}
    if recorded:  # an unreadable timing.json is written again with this call's timing
        return recorded
    atomic_write_json(path, timing)
    return timing


def adpo_data(settings: dict) -> PromptedImages:
    """AdPO's label-free training images with prompts: mini-world questions and caption requests."""
    spec = settings["data"]
    return PromptedImages(MiniVQA(spec["questions"], spec["seed"]), MiniCaptions(spec["captions"], spec["seed"]))


def train_adpo(row: str, vlm: MiniVLM, data: PromptedImages, settings: dict, seed: int, out: Path,
               progress: bool, pairs: dict | None = None, fields: dict | None = None) -> tuple[MiniVLM, dict, dict]:
    """One AdPO row on a copy of ``vlm``. ``pairs`` (``method.frozen`` of an earlier row with the same
    ``attack_on`` and objective) is reused: those rows start from the same reference on the same images, so what
    they precompute is identical and computed once. ``fields`` change the row's AdPO config (a variant)."""
    loop = _loop(settings, seed, row)
    fields = {"eps": settings["eps"], "attack_steps": settings["attack_steps"], "attack_on": settings["attack_on"],
              "attack_objective": settings["attack_objective"], "max_new_tokens": settings["max_new_tokens"],
              "attack_seed": seed, **ADPO_ROWS[row], **(fields or {})}
    if fields.get("la_schedule", "constant") != "constant":
        fields["schedule_steps"] = loop.steps
    method = AdPO(copy.deepcopy(vlm), data, AdPOConfig(**fields))
    method.progress = progress
    began = time.perf_counter()
    if pairs is not None:
        method.frozen = pairs
    method.prepare(torch.device(loop.device))
    precompute = time.perf_counter() - began
    result = fit(method, loop, out, run_config={"experiment": "adpo", "row": row}, progress=progress)
    trained = loop.steps - result.start_step
    timing = {"step_seconds": result.seconds / trained if trained else None, "steps": loop.steps,
              "precompute_seconds": None if pairs is not None else precompute}
    return result.model, _kept_timing(out, timing, result.already_finished), method.frozen


# ------------------------------------------------------------------------------------------------ the run

def merged_settings(base: dict, overrides: dict) -> dict:
    """A copy of the experiment settings ``base`` (``FULL``, ``QUICK``) with ``overrides`` merged in, section by
    section; a key ``base`` lacks is a ``ValueError`` naming the keys it has."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if key not in out:
            raise ValueError(f"unknown AdPO experiment setting {key!r}; expected one of {sorted(out)}")
        out[key] = merged_settings(out[key], value) if isinstance(value, dict) and isinstance(out[key], dict) else value
    return out


#: Per process: the models, evaluation set, training data and AdPO pairs of the settings last used (rows run one
#: after another in a process share them; each worker process of a parallel run builds its own once).
_SHARED: dict[str, Any] = {}


def _shared(settings: dict, seed: int) -> dict[str, Any]:
    # which questions the selection and the check score does not change the models, evaluation set or data
    built_from = {k: v for k, v in settings.items() if k not in ("select", "confirm")}
    key = json.dumps([built_from, seed], sort_keys=True, default=str)
    if _SHARED.get("key") != key:
        _SHARED.clear()
        clip, vlm, large = _models(settings, seed)
        _SHARED.update(key=key, clip=clip, vlm=vlm, large=large, evaluation=EvalSet(settings["eval"]),
                       data=adpo_data(settings), pairs={})
    return _SHARED


def run_row(row: str, settings: dict, seed: int, out: Path, progress: bool = False,
            fields: dict | None = None) -> dict[str, Any]:
    """Train one row (or load it, if its run in ``out/runs/<row>`` finished) and evaluate it in both VLMs:
    ``{"methods": {…}, "transfer": {…} (when there is a second VLM), "seconds": {"train_<row>", "eval_<row>"}}``.
    ``fields`` change an AdPO row's config (a variant of it; its pairs are not shared with other rows)."""
    shared = _shared(settings, seed)
    vlm, large = shared["vlm"], shared["large"]
    start = time.perf_counter()
    if row == "original":
        tower, timing = vlm.vision, {"step_seconds": None}
    elif row in ("tecoa", "fare"):
        tuned, timing = train_robust_tower(row, shared["clip"], settings, seed, out / "runs" / row, progress)
        tower = tuned.visual
    else:
        config = {k: settings[k] for k in ("attack_on", "attack_objective")} | ADPO_ROWS[row] | (fields or {})
        mode = (config["attack_on"], config["attack_objective"]) if not fields else None
        trained, timing, pairs = train_adpo(row, vlm, shared["data"], settings, seed, out / "runs" / row, progress,
                                            shared["pairs"].get(mode), fields)
        if mode is not None:
            shared["pairs"][mode] = pairs
        tower = trained.vision
    if row != "original":
        save_tensors(out / "runs" / row / ENCODER_FILE, {k: v.contiguous() for k, v in tower.state_dict().items()})
    trained_at = time.perf_counter()
    result: dict[str, Any] = {}
    for target, table in ((vlm, "methods"), (large, "transfer")):
        if target is None:
            continue
        model = copy.deepcopy(target).with_vision_tower(tower) if row != "original" else target
        result[table] = {**evaluate_row(model, shared["evaluation"]), "step_seconds": timing["step_seconds"]}
        if "precompute_seconds" in timing:
            result[table]["precompute_seconds"] = timing["precompute_seconds"]
    result["seconds"] = {f"train_{row}": trained_at - start, f"eval_{row}": time.perf_counter() - trained_at}
    return result


def _run_rows(chosen: list[str], settings: dict, seed: int, out: Path, progress: bool) -> dict[str, dict]:
    """Every row's :func:`run_row`, in this process or spread over ``settings["workers"]`` processes (one torch
    thread each on the 2-core machine; the rows are independent, so the numbers do not depend on which process ran
    a row). The longest rows (online AdPO) go first, so that the workers finish together."""
    order = sorted(chosen, key=lambda r: (r not in ADPO_ROWS or "attack_on" in ADPO_ROWS[r], r == "original"))
    return run_in_workers(run_row, order, (settings, seed, out), min(settings["workers"], len(chosen)),
                          "AdPO experiment rows", progress)


def run_adpo_experiment(out: str | Path, quick: bool = False, seed: int = 0, progress: bool = True,
                        rows: tuple[str, ...] | list[str] | None = None, overrides: dict | None = None) -> dict:
    """Train every row, evaluate it in both VLMs, write ``metrics.json``, the report and its plots.

    Python API only (a partial measurement; the command runs everything): ``rows`` picks a subset of :data:`ROWS`
    and :data:`EXTRA_ROWS` (``original`` and ``fare`` are always kept: the targets compare against them),
    ``overrides`` changes settings of :data:`FULL` / :data:`QUICK` (nested dicts merge; ``transfer_vlm: None`` skips
    the transfer rows, ``confirm.questions: 0`` the target check, ``select.questions: 0`` picks the best AdPO row
    on the table)."""
    settings = merged_settings(QUICK if quick else FULL, overrides or {})
    check_question_seeds(settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    unknown = sorted(set(rows or ()) - set(ROWS) - set(EXTRA_ROWS))
    if unknown:
        raise ValueError(f"unknown rows {unknown}; expected some of {list(ROWS + EXTRA_ROWS)}")
    chosen = [r for r in ROWS + EXTRA_ROWS
              if (r in rows if rows is not None else r in ROWS) or r in ("original", "fare")]
    results = _run_rows(chosen, settings, seed, out, progress)
    methods = {row: results[row]["methods"] for row in chosen}
    transfer = {row: results[row]["transfer"] for row in chosen if "transfer" in results[row]}
    seconds = {k: v for row in chosen for k, v in results[row]["seconds"].items()}
    selected_at = time.perf_counter()
    selection = select_best_adpo(methods, settings, seed, out, progress)
    confirmed_at = time.perf_counter()
    seconds["select"] = confirmed_at - selected_at
    confirm = _confirm(selection["best"], settings, seed, out, progress)
    seconds["confirm"] = time.perf_counter() - confirmed_at
    metrics = {"methods": methods, "transfer": transfer, "selection": selection, "confirm": confirm,
               "targets": targets(methods, transfer, settings["train"]["steps"], selection["best"], confirm,
                                  selection["on"]),
               "settings": {**settings, "quick": quick, "seed": seed, "rows": chosen,
                            "adpo": {r: ADPO_ROWS[r] for r in ADPO_ROWS if r in chosen},
                            # the loop settings every row shares (each family's rate is in "lr")
                            "loop": {k: v for k, v in asdict(TrainConfig(**settings["train"], seed=seed)).items()
                                     if k != "lr"},
                            "seconds": {**seconds, "total": time.perf_counter() - began}}}
    atomic_write_json(out / "metrics.json", metrics)
    write_report(out, "experiment-adpo", report_from_run(out),
                 run_info(command=_command(quick, seed, rows, overrides), seconds=time.perf_counter() - began))
    if progress:
        print(results_table(methods))
    return metrics


def _confirm(best: str | None, settings: dict, seed: int, out: Path, progress: bool) -> dict[str, dict]:
    """:func:`confirm_row` of the best AdPO row and FARE, side by side in two workers (none without an AdPO row or
    with ``confirm.questions`` 0)."""
    if best is None or settings["confirm"]["questions"] < 1:
        return {}
    rows = [best, "fare"]
    done = run_in_workers(confirm_row, rows, (settings, seed, out), min(settings["workers"], len(rows)),
                          "target check", progress)
    return {row: done[row] for row in rows}


def select_best_adpo(methods: dict, settings: dict, seed: int, out: Path, progress: bool = False) -> dict:
    """Pick the best of the run's AdPO rows on the validation questions ``settings["select"]``: each row's saved
    encoder scored as :func:`confirm_row` scores (clean exact match, APGD-CE at 4/255 on every clean-correct
    question), the highest robust accuracy winning, ties by clean. With ``select.questions`` 0 the pick is made on
    the table's questions (the rows' ``robust["4/255"]``, then ``clean``). Returns ``{"best", "on", "questions",
    "seed", "scores": {row: {"clean", "robust", "n"}}}`` (``best`` None without an AdPO row)."""
    trained = [r for r in ADPO_ROWS if r in methods]
    spec = settings["select"]
    if not trained or spec["questions"] < 1:
        table = {r: (methods[r]["robust"][CONFIRM_EPS], methods[r]["clean"]) for r in trained}
        return {"best": most_robust(table), "on": "table", "questions": None, "seed": None, "scores": {}}
    validation = merged_settings(settings, {"confirm": spec})
    done = run_in_workers(confirm_row, trained, (validation, seed, out), min(settings["workers"], len(trained)),
                          "best AdPO row on validation questions", progress)
    scores = {row: {"clean": done[row]["clean"], "robust": done[row]["robust"][CONFIRM_EPS], "n": done[row]["n"]}
              for row in trained}
    best = most_robust({r: (scores[r]["robust"], scores[r]["clean"]) for r in trained})
    return {"best": best, "on": "validation", "questions": spec["questions"], "seed": spec["seed"], "scores": scores}


def _command(quick: bool, seed: int, rows=None, overrides=None) -> str:
    if rows is not None or overrides:
        return (f"python -c \"from vlalign.experiments.adpo import run_adpo_experiment; run_adpo_experiment('DIR', "
                f"quick={quick}, seed={seed}, rows={list(rows) if rows is not None else None}, overrides={overrides!r})\"")
    return f"vlalign experiment adpo --out DIR{' --quick' if quick else ''}{f' --seed {seed}' if seed else ''}"
