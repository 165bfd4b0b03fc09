"""The demo: the embedded MiniCLIP reads written words and is fooled by them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from vlalign.data.mini_world import MiniWorld
from vlalign.evaluation.zero_shot import zero_shot_evaluate
from vlalign.models.embeddings import class_text_embeddings
from vlalign.models.base import ContrastiveModel
from vlalign.io import atomic_write_json
from vlalign.reporting.figures import prediction_grid
from vlalign.reporting.run_report import read_report_info, run_info, write_report
from vlalign.reporting.tables import markdown_table, percent


def typographic_grid(model: ContrastiveModel, world: MiniWorld, path: Path, n: int = 16, seed: int = 0,
                     class_emb: torch.Tensor | None = None, model_name: str = "the model") -> Path:
    """Clean images above their typographic versions, titled with the model's predictions; the figure's title
    names ``model_name``, so a before and an after grid cannot be mistaken for each other."""
    clean = world.sample("clean", n, seed)
    typo = world.sample("typographic", n, seed)
    class_emb = class_text_embeddings(model, world.classnames) if class_emb is None else class_emb
    titles, colours, images, correct = [], [], [], {}
    for images_set, name in ((clean, "clean"), (typo, "typo")):
        preds = zero_shot_evaluate(model, images_set, class_emb).predictions
        correct[name] = int((preds == images_set.labels).sum())
        for i in range(n):
            pred = world.classnames[int(preds[i])]
            truth = world.classnames[int(images_set.labels[i])]
            titles.append(f"{name}: {pred}")
            colours.append("green" if pred == truth else "red")
        images.append(images_set.images)
    return prediction_grid(torch.cat(images), titles, path, colours,
                           suptitle=f"{model_name}: {correct['clean']}/{n} clean and {correct['typo']}/{n} typographic "
                                    f"images right (green = correct, red = wrong; bottom rows carry a misleading word)")


#: The demo's splits; ``nonreading`` is the typographic split's control (random letters in the same word boxes).
DEMO_SPLITS = ("clean", "typographic", "nonreading", "matching", "zeroshot-clean", "zeroshot-typographic",
               "zeroshot-nonreading")
SPLIT_NAMES = {"typographic": "typographic (wrong class name)", "nonreading": "non-reading (random letters)",
               "matching": "matching (own class name)"}


def _phenomena(model: ContrastiveModel, world: MiniWorld, n: int, seed: int) -> dict:
    class_emb = class_text_embeddings(model, world.classnames)
    metrics = {}
    for split in DEMO_SPLITS:
        metrics[split] = zero_shot_evaluate(model, world.sample(split, n, seed), class_emb).metrics()
    return metrics


def run_demo(model: ContrastiveModel, out: str | Path, n: int = 600, seed: int = 2024, fix_steps: int = 200,
             progress: bool = True) -> dict:
    """Show the typographic failure of ``model``, then train the DPO fix (full image tower, ``fix_steps`` steps;
    0 skips it) and show before/after: a table, prediction grids, metrics.json and report.md/.html/.json."""
    from vlalign.data.preference import typographic_preference_data
    from vlalign.training.methods.preference import PreferenceConfig, train_preference
    from vlalign.training.train_config import TrainConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    world = MiniWorld()
    metrics = {"pretrained": _phenomena(model, world, n, seed)}
    grids = [typographic_grid(model, world, out / "typographic_grid.png", seed=seed,
                              model_name="Pretrained MiniCLIP")]
    if fix_steps > 0:
        pref, reg = typographic_preference_data(1500, 1500, seed=100)
        config = PreferenceConfig(method="dpo", trainable="full", beta=0.3)
        train = TrainConfig(steps=fix_steps, batch_size=64, lr=5e-4, averaging="bma", seed=seed)
        aligned = train_preference(model, pref, reg, config, train, progress=progress).model
        metrics["dpo"] = _phenomena(aligned, world, n, seed)
        grids.append(typographic_grid(aligned, world, out / "typographic_grid_dpo.png", seed=seed,
                                      model_name=f"After the DPO fix ({fix_steps} steps)"))
    atomic_write_json(out / "metrics.json", metrics)
    settings = {"n": n, "seed": seed, "fix_steps": fix_steps, "grids": [g.name for g in grids]}
    command = f"vlalign demo --out DIR --n {n} --seed {seed} --fix-steps {fix_steps}"
    write_report(out, "demo", demo_report(metrics, settings),
                 run_info(command=command, seconds=time.perf_counter() - began, demo=settings))
    print(demo_table(metrics))
    print(f"\nprediction grids: {', '.join(str(g) for g in grids)}\nreport: {out / 'report.md'}")
    return metrics


def demo_table(metrics: dict) -> str:
    """Accuracy (and how often the prediction is the written word) per split and model, then the reading effect
    (non-reading control − typographic accuracy) and the gap to clean, in points."""
    names = list(metrics)
    rows = []
    for split in metrics[names[0]]:
        row = [SPLIT_NAMES.get(split, split)]
        for name in names:
            m = metrics[name][split]
            row += [percent(m["accuracy"]), percent(m["written_label_rate"]) if "written_label_rate" in m else "—"]
        rows.append(row)
    for prefix, where in (("", ""), ("zeroshot-", " (zeroshot)")):
        for label, minus in (("gap to clean", "clean"), ("reading effect", "nonreading")):
            row = [f"**{label}{where}**"]
            for name in names:
                m = metrics[name]
                if f"{prefix}nonreading" not in m:  # a run from before the control existed
                    row += ["—", ""]
                    continue
                row += [f"{100 * (m[prefix + minus]['accuracy'] - m[prefix + 'typographic']['accuracy']):+.1f} pt", ""]
            rows.append(row)
    headers = ["split"]
    for name in names:
        headers += [f"{name} accuracy", f"{name}: pred = word"]
    return markdown_table(headers, rows)


def demo_report(metrics: dict, settings: dict) -> str:
    """Markdown body of a demo run."""
    n, seed, fix_steps = settings["n"], settings["seed"], settings["fix_steps"]
    images = "\n".join(f"![{Path(g).stem}]({g})" for g in settings["grids"])
    fix = (f"The DPO fix trains the image tower for {fix_steps} steps on 1,500 typographic (true class ≻ written "
           f"class) triplets of the 8 other classes with a KL term on 1,500 clean images." if fix_steps > 0 else
           "No fix was trained (`--fix-steps 0`).")
    return (f"# vlalign demo\n\nEmbedded MiniCLIP, {n} fresh mini-world images per split (seed {seed}); `zeroshot-` "
            f"splits hold the 4 classes never used for preference training. {fix}\n\nThe non-reading control has the "
            f"typographic images' scenes with random letters (no class name) in the same boxes: the **reading effect** "
            f"(non-reading − typographic accuracy) is what the words' meaning costs; the rest of the gap to clean "
            f"(clean − typographic) is occlusion and clutter. \"pred = word\": predictions equal to the written class "
            f"name."
            f"\n\n{demo_table(metrics)}\n\n{images}\n")


def report_from_run(run_dir: str | Path) -> str:
    """The Markdown report of a finished demo folder, from its ``metrics.json`` and ``report.json``."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return demo_report(metrics, read_report_info(run_dir)["demo"])
