"""Pictures of what still fools a model: its most confident mistakes, and the adversarial images that won."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from vlalign.attacks.threat_model import format_eps
from vlalign.data.image_set import ImageSet
from vlalign.evaluation.robust import UNBOUNDED, RobustEvaluation
from vlalign.reporting.figures import prediction_grid


def _short(text: str, width: int = 14) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def zero_shot_failure_grid(images: ImageSet, records: Sequence[dict], path: str | Path, model_name: str,
                           limit: int = 32) -> Path | None:
    """The ``limit`` most confident misclassifications (``records`` from ``zero_shot_records``) as a PNG grid;
    red titles mark predictions that follow a written word. None (and no file) when nothing is wrong."""
    wrong = [r for r in records if not r["correct"]]
    if not wrong:
        return None
    wrong.sort(key=lambda r: -r["top_k"][0]["probability"])
    shown = wrong[:limit]
    titles, colours = [], []
    for r in shown:
        title = f"{_short(r['label'])} → {_short(r['prediction'])}"
        if r["written"]:
            title += "\nreads: " + _short(", ".join(r["written"]), 18)
        titles.append(title)
        colours.append("red" if r["follows_written"] else "darkorange")
    pictures = images.images[torch.tensor([r["index"] for r in shown])]
    written_note = ("; red: the written word, orange: another class" if any(r["follows_written"] for r in shown)
                    else "")
    suptitle = (f"What still fools {model_name}: {len(wrong)} of {len(records)} images misclassified "
                f"(most confident {len(shown)} shown, true → predicted{written_note})")
    return prediction_grid(pictures, titles, path, colours, columns=8, suptitle=suptitle)


def robust_failure_grid(images: ImageSet, result: RobustEvaluation, path: str | Path, model_name: str,
                        per_attack: int = 8) -> Path | None:
    """Adversarial images that fooled the model: up to ``per_attack`` per attack at its largest ε (or without an
    ε-ball), titled true → predicted. None (and no file) when no attack fooled it."""
    pictures, titles = [], []
    for name, by_eps in result.examples.items():
        bounded = [e for e in by_eps if e != UNBOUNDED]
        key = max(bounded) if bounded else UNBOUNDED
        index, adversarial = by_eps[key]
        predicted = result.predictions[name][key]
        label = name if key == UNBOUNDED else f"{name} ε={format_eps(key)}"
        for i, picture in zip(index[:per_attack].tolist(), adversarial[:per_attack]):
            pictures.append(picture)
            titles.append(f"{_short(label, 20)}\n{_short(images.classnames[int(result.labels[i])])} → "
                          f"{_short(images.classnames[int(predicted[i])])}")
        while len(pictures) % per_attack:  # one row per attack: blank (white, untitled) tiles fill it
            pictures.append(torch.full_like(pictures[-1], 255))
            titles.append("")
    if not pictures:
        return None
    suptitle = (f"Adversarial images that fool {model_name} (each attack at its largest ε; true → predicted; "
                f"clean accuracy {100 * result.clean_accuracy:.1f}%)")
    return prediction_grid(torch.stack(pictures), titles, path, ["red"] * len(pictures), columns=per_attack,
                           suptitle=suptitle)
