"""The demo: the embedded MiniCLIP reads written words and is fooled by them."""

from __future__ import annotations

from pathlib import Path

import torch

from vlalign.data.mini_world import MiniWorld
from vlalign.evaluation.zero_shot import class_text_embeddings, zero_shot_evaluate
from vlalign.models.base import ContrastiveModel
from vlalign.models.checkpoint import atomic_write_bytes, atomic_write_json
from vlalign.reporting.figures import prediction_grid
from vlalign.reporting.tables import markdown_table, percent


def typographic_grid(model: ContrastiveModel, world: MiniWorld, path: Path, n: int = 16, seed: int = 0,
                     class_emb: torch.Tensor | None = None) -> Path:
    """Clean images above their typographic versions, titled with the model's predictions."""
    clean = world.sample("clean", n, seed)
    typo = world.sample("typographic", n, seed)
    class_emb = class_text_embeddings(model, world.classnames) if class_emb is None else class_emb
    titles, colours, images = [], [], []
    for images_set, name in ((clean, "clean"), (typo, "typo")):
        preds = zero_shot_evaluate(model, images_set, class_emb).predictions
        for i in range(n):
            pred = world.classnames[int(preds[i])]
            truth = world.classnames[int(images_set.labels[i])]
            titles.append(f"{name}: {pred}")
            colours.append("green" if pred == truth else "red")
        images.append(images_set.images)
    return prediction_grid(torch.cat(images), titles, path, colours,
                           suptitle="Predictions (green = correct, red = wrong); bottom rows carry a misleading word")


def run_demo(model: ContrastiveModel, out: str | Path, n: int = 600, seed: int = 2024) -> dict:
    """Evaluate clean / typographic / matching accuracy, save a prediction grid, metrics.json and report.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    world = MiniWorld()
    class_emb = class_text_embeddings(model, world.classnames)
    rows, metrics = [], {}
    for split in ("clean", "typographic", "matching"):
        result = zero_shot_evaluate(model, world.sample(split, n, seed), class_emb)
        metrics[split] = result.metrics()
        rows.append([split, percent(result.accuracy),
                     percent(result.written_label_rate) if split != "clean" else "—"])
    grid = typographic_grid(model, world, out / "typographic_grid.png", seed=seed, class_emb=class_emb)
    table = markdown_table(["split", "zero-shot accuracy", "prediction = written word"], rows)
    atomic_write_json(out / "metrics.json", metrics)
    report = (f"# vlalign demo\n\nEmbedded MiniCLIP, {n} fresh mini-world images per split (seed {seed}).\n\n"
              f"{table}\n\n![predictions]({grid.name})\n")
    atomic_write_bytes(out / "report.md", report.encode())
    print(table)
    print(f"\nprediction grid: {grid}\nreport: {out / 'report.md'}")
    return metrics
