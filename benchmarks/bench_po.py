"""What caching frozen quantities buys in contrastive preference optimization, measured side by side.

- ``po``: one full-image-tower DPO step as vlalign takes it (:class:`ContrastivePreference`'s ``forward``: prompt
  embeddings and reference logits computed once, before training) against a plain cross-entropy step of the same
  tower on the same batch (target ≤ 1.10×: preference optimization should cost what fine-tuning costs), and
  against a naive DPO step that re-runs the frozen reference model (and the text tower) on every batch.
- ``head``: a head-mode step on cached image features against the same head fed by the image encoder every step
  (target: ≥ 50× faster).

Every variant trains its own copy of the model with Adamax (the method's optimizer) on one fixed batch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from benchmarks.common import Row, Settings, interleaved, time_row
from vlalign.data.datasets import TensorImageDataset, collate_for
from vlalign.data.preference import typographic_preference_data
from vlalign.losses.objectives import preference_objective
from vlalign.models.heads import LinearHead
from vlalign.models.loading import load_model
from vlalign.training.methods.preference import DEFAULT_LR, ContrastivePreference, PreferenceConfig

MODEL = "mini"


def _method(trainable: str, n: int, device: torch.device) -> tuple[ContrastivePreference, dict]:
    """A prepared DPO method over ``n`` typographic preference triplets, and one batch of all ``n``."""
    pref, _ = typographic_preference_data(n, 1, seed=1)
    data = TensorImageDataset(pref.images, chosen=pref.chosen, rejected=pref.rejected)
    method = ContrastivePreference(load_model(MODEL), data, pref.prompts, None,
                                   PreferenceConfig(method="dpo", trainable=trainable, lam=0.0))
    method.prepare(device)
    method.train()
    batch = (collate_for(data) or default_collate)([data[i] for i in range(n)])
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return method, {"pref": batch, "step": 0, "seed": 0}


def _optimizer_step(module: torch.nn.Module, lr: float) -> Callable[[torch.Tensor], None]:
    optimizer = torch.optim.Adamax([p for p in module.parameters() if p.requires_grad], lr=lr)

    def step(loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def po_step_variants(batch_size: int, device: torch.device) -> dict[str, Callable[[], None]]:
    """The three full-tower steps on one batch: vlalign's cached-reference DPO, plain CE, and naive DPO."""
    method, batch = _method("full", batch_size, device)
    po_update = _optimizer_step(method.trainable_module(), DEFAULT_LR["full"])

    def po_cached() -> None:
        po_update(method(batch)["loss"])

    pref = batch["pref"]
    prompts = list(method.prompts)
    text, scale = method.frozen["pref_text"], method.frozen["scale"]
    chosen, rejected = pref["chosen"], pref["rejected"]

    ce_model = copy.deepcopy(method.policy)
    ce_update = _optimizer_step(ce_model.image_encoder, DEFAULT_LR["full"])

    def ce() -> None:
        pixels = pref["pixels"].float().div_(255.0)
        ce_update(F.cross_entropy(scale * ce_model.encode_image(pixels) @ text.t(), chosen))

    naive_model, reference = copy.deepcopy(method.policy), copy.deepcopy(method.policy).eval()
    naive_update = _optimizer_step(naive_model.image_encoder, DEFAULT_LR["full"])
    objective, params = preference_objective("dpo"), method.params

    def po_naive() -> None:
        pixels = pref["pixels"].float().div_(255.0)
        with torch.no_grad():
            t = naive_model.encode_text(prompts)
            ref_logits = scale * reference.encode_image(pixels) @ reference.encode_text(prompts).t()
        logits = scale * naive_model.encode_image(pixels) @ t.t()
        naive_update(objective(logits, ref_logits, chosen, rejected, params))

    return {"CE step": ce, "PO step (cached reference)": po_cached, "PO step (naive: reference re-run)": po_naive}


def head_step_variants(n: int, batch_size: int, device: torch.device) -> dict[str, Callable[[], None]]:
    """Head-mode DPO step on cached features (vlalign) and the same head fed by the image encoder."""
    method, full = _method("head", n, device)
    rows = torch.arange(batch_size, device=device)
    batch = {"pref": {"index": rows}, "step": 0, "seed": 0}
    cached_update = _optimizer_step(method.trainable_module(), DEFAULT_LR["head"])

    def cached() -> None:
        cached_update(method(batch)["loss"])

    base = method.policy.base
    head = LinearHead(base.embed_dim).to(device)
    head.load_state_dict(method.policy.head.state_dict())
    encoder_update = _optimizer_step(head, DEFAULT_LR["head"])
    frozen, objective, params = method.frozen, method.objective, method.params
    pixels_u8 = full["pref"]["pixels"][:batch_size]
    chosen, rejected = frozen["pref_chosen"][rows], frozen["pref_rejected"][rows]

    def through_encoder() -> None:
        with torch.no_grad():
            features = base.encode_image(pixels_u8.float().div_(255.0))
        logits = frozen["scale"] * head(features) @ head(frozen["pref_text"]).t()
        encoder_update(objective(logits, frozen["pref_reference"][rows], chosen, rejected, params))

    return {"head step (cached features)": cached, "head step (through the encoder)": through_encoder}


MODEL_LABEL = "MiniCLIP (64 px, embedded)"


def run_po(settings: Settings) -> list[Row]:
    """PO step vs CE step vs naive PO step."""
    device = torch.device(settings.device)
    batch, model = settings.pick(64, 8), MODEL_LABEL
    variants = po_step_variants(batch, device)
    timing = interleaved(variants, "CE step", settings.repeats, calls=settings.pick(5, 1), device=device)
    rows = [
        time_row("po", "full-tower DPO step (reference logits cached) vs plain CE step, same batch", timing,
                 "PO step (cached reference)", "CE step", model=model, batch=batch, settings=settings, target=1.10),
        time_row("po", "naive DPO step (reference model re-run) vs plain CE step, same batch", timing,
                 "PO step (naive: reference re-run)", "CE step", model=model, batch=batch, settings=settings),
    ]
    saving = timing.ratio("PO step (naive: reference re-run)") / timing.ratio("PO step (cached reference)")
    rows[1].extra["naive_over_cached"] = saving
    return rows


def run_head(settings: Settings) -> list[Row]:
    """Head mode on cached features vs through the encoder."""
    device, model = torch.device(settings.device), MODEL_LABEL
    n = settings.pick(512, 32)
    head_batch = settings.pick(64, 8)
    timing = interleaved(head_step_variants(n, head_batch, device), "head step (through the encoder)",
                         settings.repeats, calls=settings.pick(20, 2), device=device)
    row = time_row("head", "head-mode DPO step: cached image features vs the same head through the encoder", timing,
                   "head step (cached features)", "head step (through the encoder)", model=model, batch=head_batch,
                   settings=settings, target=1 / 50, target_text="≥ 50× faster (ratio ≤ 0.02)")
    row.extra["speedup"] = 1 / row.ratio
    return [row]
