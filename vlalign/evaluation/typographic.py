"""The typographic-attack evaluation of contrastive-PO Table 1 on the mini world."""

from __future__ import annotations

import torch

from vlalign.data.mini_world import MiniWorld
from vlalign.evaluation.divergence import mean_kl, policy_logits
from vlalign.evaluation.zero_shot import zero_shot_evaluate
from vlalign.models.embeddings import class_text_embeddings
from vlalign.models.base import ContrastiveModel

#: metrics.json key -> mini-world split. ``nonreading`` is the typographic split's control: the same scenes and
#: word boxes with random letters, so ``nonreading − typographic`` is the reading effect.
TABLE1_SPLITS = {
    "clean": "indomain-clean", "typographic": "indomain-typographic",
    "clean_heldout": "zeroshot-clean", "typographic_heldout": "zeroshot-typographic",
    "nonreading": "indomain-nonreading", "nonreading_heldout": "zeroshot-nonreading",
}


@torch.no_grad()
def evaluate_typographic(model: ContrastiveModel, reference: ContrastiveModel | None, n: int, seed: int,
                         world: MiniWorld | None = None, kl_direction: str = "policy_ref") -> dict[str, float]:
    """Clean / typographic / non-reading-control accuracy on in-domain and held-out classes, written-label rates,
    and the KL of the model's zero-shot policy from ``reference``'s on clean images of all classes (``kl_clean``)."""
    world = world or MiniWorld()
    class_emb = class_text_embeddings(model, world.classnames)
    metrics: dict[str, float] = {}
    for key, split in TABLE1_SPLITS.items():
        result = zero_shot_evaluate(model, world.sample(split, n, seed), class_emb)
        metrics[key] = result.accuracy
        if "typographic" in key:
            metrics[f"written_label_rate{key[len('typographic'):]}"] = result.written_label_rate
    if reference is not None:
        clean = world.sample("clean", n, seed + 1)
        prompts = [f"a photo of a {c}" for c in world.classnames]
        metrics["kl_clean"] = mean_kl(policy_logits(model, clean, prompts), policy_logits(reference, clean, prompts),
                                      kl_direction)
    return metrics


def evaluate_typographic_phenomena(model: ContrastiveModel, world: MiniWorld, n: int, seed: int) -> dict[str, float]:
    """Clean, typographic, matching-text and non-reading-control accuracy and the written-label rate on fresh test
    images."""
    class_emb = class_text_embeddings(model, world.classnames)
    results = {}
    for split in ("clean", "typographic", "matching", "nonreading"):
        result = zero_shot_evaluate(model, world.sample(split, n, seed), class_emb)
        results[f"{split}_accuracy"] = result.accuracy
        if split == "typographic":
            results["written_label_rate"] = result.written_label_rate
    return results
