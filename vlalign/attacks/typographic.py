"""Typographic attack: write another class's name onto the image.

Papers: Goh et al., "Multimodal Neurons in Artificial Neural Networks", Distill 2021 (the phenomenon);
Azuma & Matsui, "Defense-Prefix for Preventing Typographic Attacks on CLIP", 2023 (the protocol: a random
other class name in a random font, size, colour and position). Rendering is
:func:`vlalign.data.typographic.typographic_attack`, shared with the mini world and ``vlalign data typographic``.

Threat model: unbounded in any ℓp norm (a legible word), no model access at all. Output images are quantized to
8 bits, like a rendered image would be. Needs the class names and labels, so it takes zero-shot objectives.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vlalign.attacks.base import Attack, AttackResult, Objective
from vlalign.attacks.objectives import ZeroShotObjective
from vlalign.data.typographic import WordStyle, typographic_attack


class TypographicAttack(Attack):
    """Write one wrong class name ``n_instances`` times on each image (seeded)."""

    norm = "unbounded"
    white_box = False

    def __init__(self, n_instances: int = 1, style: WordStyle = WordStyle(min_size=0.08, max_size=0.2)) -> None:
        super().__init__(None)
        if n_instances < 1:
            raise ValueError(f"n_instances must be >= 1, got {n_instances}")
        self.n_instances = n_instances
        self.style = style

    def run(self, objective: Objective, images: torch.Tensor, generator: torch.Generator) -> AttackResult:
        if not isinstance(objective, ZeroShotObjective):
            raise TypeError(f"the typographic attack needs class names: a ZeroShotObjective, got {type(objective).__name__}")
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        uint8 = (images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        written, out = [], []
        for i in range(uint8.shape[0]):
            label = objective.classnames[int(objective.labels[i])]
            image, word = typographic_attack(Image.fromarray(uint8[i]), label, objective.classnames, rng,
                                             self.n_instances, self.style)
            out.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
            written.append(objective.classnames.index(word))
        adversarial = torch.stack(out).to(images.device, images.dtype) / 255.0
        with torch.no_grad():
            value = objective(adversarial)
        return AttackResult(adversarial, value.loss.float(), value.fooled,
                            history={"written": written})
