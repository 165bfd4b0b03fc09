"""What caching frozen quantities buys in contrastive preference optimization, measured in one run.

For each trainable part, time one training step the way vlalign does it (prompt embeddings, reference logits and,
in head mode, image features computed once) against a naive step that recomputes them with extra forward passes
(text tower every step, a frozen reference model run on the batch, and in head mode the image tower too).

    python benchmarks/bench_po.py [--steps 20] [--batch 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from vlalign.data.preference import typographic_preference_data
from vlalign.models.embeddings import image_embeddings
from vlalign.losses.objectives import ObjectiveParams, preference_objective
from vlalign.models.heads import LinearHead
from vlalign.models.loading import load_model
from vlalign.reporting.tables import markdown_table


def _time(fn, steps: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("mini")
    reference = copy.deepcopy(model)
    pref, _ = typographic_preference_data(512, 8, seed=1)
    prompts = list(pref.prompts)
    objective, params = preference_objective("dpo"), ObjectiveParams()
    scale = model.logit_scale.detach()
    idx = torch.arange(args.batch)
    pixels = pref.images[idx].float() / 255
    chosen, rejected = pref.chosen[idx], pref.rejected[idx]
    with torch.no_grad():
        text = model.encode_text(prompts)
        feats = image_embeddings(model, pref.images)
        ref_logits = scale * feats @ text.t()

    head = LinearHead(model.embed_dim)
    head_opt = torch.optim.Adamax(head.parameters(), lr=1e-3)

    def head_cached():
        loss = objective(scale * head(feats[idx]) @ head(text).t(), ref_logits[idx], chosen, rejected, params)
        head_opt.zero_grad()
        loss.backward()
        head_opt.step()

    def head_naive():
        with torch.no_grad():
            t = model.encode_text(prompts)
            f = model.encode_image(pixels)
            r = scale * reference.encode_image(pixels) @ reference.encode_text(prompts).t()
        loss = objective(scale * head(f) @ head(t).t(), r, chosen, rejected, params)
        head_opt.zero_grad()
        loss.backward()
        head_opt.step()

    tower_opt = torch.optim.Adamax(model.visual.parameters(), lr=1e-5)

    def full_cached():
        loss = objective(scale * model.encode_image(pixels) @ text.t(), ref_logits[idx], chosen, rejected, params)
        tower_opt.zero_grad()
        loss.backward()
        tower_opt.step()

    def full_naive():
        with torch.no_grad():
            t = model.encode_text(prompts)
            r = scale * reference.encode_image(pixels) @ reference.encode_text(prompts).t()
        loss = objective(scale * model.encode_image(pixels) @ t.t(), r, chosen, rejected, params)
        tower_opt.zero_grad()
        loss.backward()
        tower_opt.step()

    rows = []
    for name, cached, naive in (("linear head", head_cached, head_naive), ("full image tower", full_cached, full_naive)):
        c, n = _time(cached, args.steps), _time(naive, args.steps)
        rows.append([name, f"{1000 * c:.2f}", f"{1000 * n:.2f}", f"{n / c:.1f}x"])
    print(f"MiniCLIP, batch {args.batch}, {args.threads} threads, mean of {args.steps} steps")
    print(markdown_table(["trainable part", "vlalign step (ms)", "naive step (ms)", "speed-up"], rows))


if __name__ == "__main__":
    main()
