"""Evaluation cost: zero-shot accuracy against a bare forward pass, and Recall@k on a COCO-sized gallery.

- ``zero-shot``: :func:`vlalign.evaluation.zero_shot.zero_shot_evaluate` (class-prompt embeddings, image
  embeddings in fixed batches, logits, predictions) against the image tower's forward pass alone over the same
  images and batches (target: ≤ 10% overhead).
- ``retrieval``: :func:`vlalign.evaluation.retrieval.retrieval_recall` (chunked exact top-k, both directions) on
  5,000 images and 25,000 captions (five per image, COCO's test split) of width 512 (CLIP ViT-B/32), against the
  naive computation that forms the full 25,000 × 5,000 similarity matrix: time and peak memory.
"""

from __future__ import annotations

import torch

from benchmarks.common import Row, Settings, interleaved, time_row
from vlalign.data.mini_world import MiniWorld
from vlalign.evaluation.retrieval import recall_summary, retrieval_recall
from vlalign.evaluation.zero_shot import zero_shot_evaluate
from vlalign.models.loading import load_model

BATCH = 256


def run_zero_shot(settings: Settings) -> list[Row]:
    n = settings.pick(1024, 64)
    model = load_model("mini", settings.device)
    images = MiniWorld().sample("clean", n, seed=0)

    def evaluate() -> None:
        zero_shot_evaluate(model, images, batch_size=BATCH)

    @torch.no_grad()
    def bare() -> None:
        for start in range(0, n, BATCH):
            model.encode_image(images.images[start: start + BATCH].float().div_(255.0).to(model.device))

    timing = interleaved({"zero-shot evaluation": evaluate, "bare forward": bare}, "bare forward", settings.repeats,
                         device=settings.device)
    row = time_row("zero-shot", f"zero_shot_evaluate vs the image tower's forward alone, {n} images, 12 classes",
                   timing, "zero-shot evaluation", "bare forward", model="MiniCLIP (64 px, embedded)",
                   batch=BATCH, settings=settings, per_call="ms per pass", target=1.10)
    row.extra["images"] = n
    return [row]


def _gallery(n_images: int, per_image: int, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalized image and caption embeddings; caption t belongs to image t // per_image and lies near it."""
    generator = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(n_images, dim, generator=generator), dim=-1)
    owner = torch.arange(n_images).repeat_interleave(per_image)
    texts = images[owner] + 4.0 * torch.randn(len(owner), dim, generator=generator) / dim ** 0.5
    return images, torch.nn.functional.normalize(texts, dim=-1), owner


def full_matrix_recall(images: torch.Tensor, texts: torch.Tensor, owner: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """The textbook computation: the whole similarity matrix, then top-k per row (ties broken arbitrarily)."""
    kmax = max(ks)
    similarity = texts @ images.t()  # [T, N]
    t2i = similarity.topk(kmax, dim=1).indices
    i2t = similarity.t().topk(kmax, dim=1).indices
    t2i_hit = t2i == owner[:, None]
    i2t_hit = owner[i2t] == torch.arange(images.shape[0])[:, None]
    return recall_summary({k: float(i2t_hit[:, :k].any(1).double().mean()) for k in ks},
                          {k: float(t2i_hit[:, :k].any(1).double().mean()) for k in ks})


def run_retrieval(settings: Settings) -> list[Row]:
    """Chunked Recall@k vs the full similarity matrix on random CPU embeddings (always on the CPU)."""
    n_images, per_image, dim = settings.pick(5000, 200), 5, 512
    images, texts, owner = _gallery(n_images, per_image, dim)
    results = {}

    def chunked() -> None:
        results["vlalign"] = retrieval_recall(images, texts, owner)

    def full() -> None:
        results["full"] = full_matrix_recall(images, texts, owner)

    timing = interleaved({"chunked top-k (vlalign)": chunked, "full similarity matrix": full},
                         "full similarity matrix", settings.repeats)
    row = time_row("retrieval", f"retrieval_recall (chunked, stable ties) vs the full {len(texts)} × {n_images} "
                   "similarity matrix + topk, both directions", timing, "chunked top-k (vlalign)",
                   "full similarity matrix", model=f"random embeddings, width {dim}", batch=f"{n_images} images, "
                   f"{len(texts)} captions", settings=settings, per_call="ms per evaluation",
                   device="cpu")  # the embeddings stay on the CPU, whatever --device says
    row.extra.update({"mR_vlalign": results["vlalign"]["mR"], "mR_full_matrix": results["full"]["mR"],
                      "full_matrix_MiB": len(texts) * n_images * 4 / 2**20})
    return [row]
