"""Attack speed against a peer library and against the cost floor, on MiniCLIP and a config-built transformers CLIP.

- ``pgd``: vlalign's :class:`~vlalign.attacks.pgd.PGD` against torchattacks' ``PGD`` on the same model, batch,
  ε, step size and number of steps (target: ≥ 1.0× torchattacks' throughput). Both are also run from one fixed
  start (torchattacks' own random start, drawn from the seeded global generator, handed to vlalign's
  ``PGD.iterate``) and their adversarial images compared: ℓ∞ PGD takes the sign of the gradient, and
  torchattacks' mean-reduced loss only scales it, so the images should agree exactly.
- ``apgd``: vlalign's APGD-CE against torchattacks' ``APGD(loss="ce")`` (a port of AutoAttack's reference code),
  throughput and the robust accuracy each leaves (their random starts differ, so images are not compared).
  torchattacks attacks only the images the model classifies correctly, so labels are the clean predictions:
  both attack every image.
- ``attack-floor``: each attack step should cost one forward and one input-gradient backward pass and nothing
  more; the floor is that pass, timed in the same rounds.

torchattacks is a bench-only extra, installed with ``pip install --no-deps torchattacks scipy`` (its declared
torchvision would replace this torch; it imports scipy). Without it the comparison rows are skipped with a
message. The transformers CLIP is built from a small ``CLIPConfig`` (no download) and attacked through
:class:`vlalign.models.hf_clip.HFCLIP` on random class embeddings: only its image tower runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from benchmarks.common import Row, Settings, interleaved, skipped_row
from vlalign.attacks.apgd import APGD
from vlalign.attacks.base import attack_mode
from vlalign.attacks.objectives import LogitObjective
from vlalign.attacks.pgd import PGD

EPS = 4 / 255
N_CLASSES = 12


def tiny_hf_clip(image_size: int = 64, patch: int = 8, width: int = 128, layers: int = 4):
    """A randomly initialized transformers CLIP of the given vision size, wrapped as a ContrastiveModel."""
    from transformers import CLIPConfig, CLIPModel

    from vlalign.models.hf_clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, HFCLIP

    config = CLIPConfig(
        text_config=dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=image_size, patch_size=patch, hidden_size=width, intermediate_size=4 * width,
                           num_hidden_layers=layers, num_attention_heads=4),
        projection_dim=64,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    return HFCLIP(model, tokenizer=None, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
                  resize_to=image_size, crop_size=image_size)


def torchattacks_or_none():
    """The torchattacks module, or None when the bench extra is not installed."""
    try:
        import torchattacks
    except ImportError:
        return None
    return torchattacks


SKIP_TORCHATTACKS = ("torchattacks is not installed (bench extra: pip install --no-deps torchattacks scipy)")


class LogitModel(nn.Module):
    """The objective's logits as a plain classifier ``forward(x) -> [B, K]``, the interface torchattacks takes."""

    def __init__(self, objective: LogitObjective) -> None:
        super().__init__()
        self.model = objective.model
        self.objective = objective

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.objective.scale * self.model.encode_image(pixels) @ self.objective.candidates.t()


def _models(settings: Settings, transformers_clip: bool = True) -> dict[str, nn.Module]:
    from vlalign.models.loading import load_model

    device = torch.device(settings.device)
    models = {"MiniCLIP (64 px, embedded)": load_model("mini", device)}
    if transformers_clip and not settings.quick:
        models["transformers CLIP (64 px, ViT 4x128, config-built)"] = tiny_hf_clip().to(device)
    return models


def _problem(model: nn.Module, batch: int, device: torch.device) -> tuple[torch.Tensor, LogitObjective]:
    """Random images and class embeddings; labels are the clean predictions, so every image is attackable."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, 64, 64, generator=generator).to(device)
    candidates = torch.nn.functional.normalize(torch.randn(N_CLASSES, model.embed_dim, generator=generator), dim=-1)
    probe = LogitObjective(model, candidates.to(device), torch.zeros(batch, dtype=torch.long))
    with torch.no_grad():
        labels = probe.scores(images, torch.arange(batch, device=device)).argmax(1).cpu()
    return images, LogitObjective(model, candidates.to(device), labels)


def _robust_accuracy(objective: LogitObjective, adversarial: torch.Tensor) -> float:
    index = torch.arange(objective.n, device=adversarial.device)
    with torch.no_grad():
        fooled = objective.fooled_from_scores(objective.scores(adversarial, index), index)
    return float((~fooled).float().mean())


def throughput_row(benchmark: str, compared: str, timing, variant: str, baseline: str, work: int, *, model: str,
                   batch: int, settings: Settings, target: float | None, extra: dict) -> Row:
    """A row of throughputs (``work`` units per call): ratio = variant throughput / baseline throughput."""
    ratios = sorted(1 / r for r in timing.ratios[variant])
    ratio = 1 / timing.ratio(variant)
    return Row(benchmark, compared, variant, baseline, model, batch, settings.threads, settings.device,
               "images·steps/s", work / timing.median(variant), work / timing.median(baseline), ratio,
               (ratios[0], ratios[-1]), len(ratios), f"≥ {target:.2f}×" if target is not None else "",
               None if target is None else ratio >= target,
               *timing.memory(variant, baseline), extra)


def pgd_variants(model: nn.Module, images: torch.Tensor, objective: LogitObjective, steps: int,
                 torchattacks) -> tuple[dict[str, Callable[[], object]], dict[str, float]]:
    """vlalign PGD (keep last / best) and torchattacks PGD, plus the fixed-start agreement of their images."""
    step_size = 2.5 * EPS / steps
    ours = {keep: PGD(EPS, steps=steps, step_size=step_size, keep=keep) for keep in ("last", "best")}
    theirs = torchattacks.PGD(LogitModel(objective), eps=EPS, alpha=step_size, steps=steps, random_start=True)
    labels = objective.labels

    # One fixed start: torchattacks draws it from the global generator; the same draw is handed to vlalign.
    torch.manual_seed(1234)
    start = torch.clamp(images + torch.empty_like(images).uniform_(-EPS, EPS), 0, 1)
    torch.manual_seed(1234)
    their_images = theirs(images, labels)
    index = torch.arange(images.shape[0], device=images.device)
    with attack_mode(model):
        our_images = ours["last"].iterate(objective, images, index, start).adversarial
    difference = (our_images - their_images).abs()
    agreement = {"max_abs_difference": float(difference.max()),
                 "share_of_pixels_equal": float((difference == 0).float().mean()),
                 "robust_accuracy_vlalign": _robust_accuracy(objective, our_images),
                 "robust_accuracy_torchattacks": _robust_accuracy(objective, their_images)}
    variants = {"vlalign PGD keep=last": lambda: ours["last"](objective, images, seed=0),
                "vlalign PGD keep=best": lambda: ours["best"](objective, images, seed=0),
                "torchattacks PGD": lambda: theirs(images, labels)}
    return variants, agreement


def run_pgd(settings: Settings) -> list[Row]:
    torchattacks = torchattacks_or_none()
    if torchattacks is None:
        return [skipped_row("pgd", "vlalign PGD vs torchattacks PGD", SKIP_TORCHATTACKS, settings)]
    device = torch.device(settings.device)
    batch, steps = settings.pick(32, 8), settings.pick(10, 2)
    rows = []
    for label, model in _models(settings).items():
        images, objective = _problem(model, batch, device)
        variants, agreement = pgd_variants(model, images, objective, steps, torchattacks)
        timing = interleaved(variants, "torchattacks PGD", settings.repeats, device=device)
        for keep in ("last", "best"):
            extra = {**agreement} if keep == "last" else {}
            rows.append(throughput_row(
                "pgd", f"PGD-{steps} ℓ∞ ε=4/255 (keep={keep}) vs torchattacks PGD, same step size", timing,
                f"vlalign PGD keep={keep}", "torchattacks PGD", batch * steps, model=label, batch=batch,
                settings=settings, target=1.0, extra=extra))
    return rows


def run_apgd(settings: Settings) -> list[Row]:
    torchattacks = torchattacks_or_none()
    if torchattacks is None:
        return [skipped_row("apgd", "vlalign APGD-CE vs torchattacks APGD-CE", SKIP_TORCHATTACKS, settings)]
    device = torch.device(settings.device)
    batch, steps = settings.pick(32, 8), settings.pick(10, 2)
    rows = []
    for label, model in _models(settings).items():
        images, objective = _problem(model, batch, device)
        ours = APGD(EPS, steps=steps, loss="ce")
        theirs = torchattacks.APGD(LogitModel(objective), norm="Linf", eps=EPS, steps=steps, n_restarts=1, seed=0,
                                   loss="ce", rho=0.75)
        extra = {"robust_accuracy_vlalign": _robust_accuracy(objective, ours(objective, images, seed=0).adversarial),
                 "robust_accuracy_torchattacks": _robust_accuracy(objective, theirs(images, objective.labels))}
        variants = {"vlalign APGD-CE": lambda: ours(objective, images, seed=0),
                    "torchattacks APGD-CE": lambda: theirs(images, objective.labels)}
        timing = interleaved(variants, "torchattacks APGD-CE", settings.repeats, device=device)
        rows.append(throughput_row("apgd", f"APGD-CE {steps} steps ℓ∞ ε=4/255 vs torchattacks APGD-CE", timing,
                                   "vlalign APGD-CE", "torchattacks APGD-CE", batch * steps, model=label, batch=batch,
                                   settings=settings, target=1.0, extra=extra))
    return rows


def run_floor(settings: Settings) -> list[Row]:
    device = torch.device(settings.device)
    batch, steps = settings.pick(32, 8), settings.pick(10, 2)
    rows = []
    for label, model in _models(settings, transformers_clip=False).items():
        images, objective = _problem(model, batch, device)

        def floor() -> None:
            with attack_mode(model):
                x = images.clone().requires_grad_(True)
                for _ in range(steps):
                    torch.autograd.grad(model.encode_image(x).sum(), x)

        attacks = {"PGD keep=best": PGD(EPS, steps=steps), "APGD-CE": APGD(EPS, steps=steps, loss="ce")}
        variants: dict[str, Callable[[], object]] = {"fwd+bwd": floor}
        variants.update({name: (lambda a=attack: a(objective, images, seed=0)) for name, attack in attacks.items()})
        timing = interleaved(variants, "fwd+bwd", settings.repeats, device=device)
        for name in attacks:
            row = throughput_row("attack-floor", f"{name} ({steps} steps) vs {steps}× bare forward + input-gradient "
                                 "backward", timing, name, "fwd+bwd", batch * steps, model=label, batch=batch,
                                 settings=settings, target=None, extra={})
            rows.append(row)
    return rows
