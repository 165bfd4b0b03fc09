"""Rendering pieces the procedural worlds share: named colours, noisy backgrounds, shapes and distractor strokes.

Each function draws from the ``rng`` it is given in a fixed order, so a world that calls them in a fixed order
renders every image as a pure function of its generator's seed.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from vlalign.data.shapes import draw_shape_mask

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 215, 40),
    "purple": (140, 50, 180), "orange": (240, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20),
    "cyan": (40, 200, 210), "pink": (240, 120, 180), "brown": (130, 80, 40), "gray": (128, 128, 128),
}

_NOISE_BANK = np.random.default_rng(12345).standard_normal((256, 256, 3)).astype(np.float32)


def background(rng: np.random.Generator, size: int, noise_std: float) -> np.ndarray:
    """A float ``[size, size, 3]`` canvas: a flat colour or a two-colour ramp, plus Gaussian texture."""
    # Noise comes from a fixed Gaussian texture, cropped at a random offset: drawing 3*size^2 fresh normals
    # per image was the generator's bottleneck.
    base = rng.integers(0, 256, size=3).astype(np.float32)
    if rng.random() < 0.5:
        other = rng.integers(0, 256, size=3).astype(np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        ramp = np.linspace(0, 1, size, dtype=np.float32)
        grad = math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None]
        grad = (grad - grad.min()) / max(float(grad.max() - grad.min()), 1e-6)
        img = base + grad[..., None] * (other - base)
    else:
        img = np.broadcast_to(base, (size, size, 3)).copy()
    bank = _NOISE_BANK.shape[0]
    if size <= bank:
        oy, ox = rng.integers(0, bank - size + 1, size=2)
        noise = _NOISE_BANK[oy:oy + size, ox:ox + size]
    else:
        noise = rng.standard_normal((size, size, 3), dtype=np.float32)
    img += noise * np.float32(noise_std * rng.uniform(0.3, 1.0))
    return img


def paint_shape(img: np.ndarray, rng: np.random.Generator, shape: str, colour: str, cx: float, cy: float,
                radius: float, angle: float) -> np.ndarray:
    """``img`` with ``shape`` painted in the named ``colour`` (jittered by the rng), anti-aliasing free."""
    size = img.shape[0]
    mask_img = Image.new("L", (size, size), 0)
    draw_shape_mask(ImageDraw.Draw(mask_img), shape, cx, cy, radius, angle)
    mask = np.asarray(mask_img, dtype=np.float32)[..., None] / 255.0
    rgb = np.asarray(COLOURS[colour], dtype=np.float32) + rng.normal(0, 12, size=3)
    return img * (1 - mask) + rgb * mask


def draw_distractors(pil: Image.Image, rng: np.random.Generator, low: int, high: int) -> None:
    """Draw between ``low`` and ``high`` (inclusive) random coloured line segments onto ``pil`` in place."""
    size = pil.size[0]
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(low, high + 1))):
        x0, y0, x1, y1 = rng.uniform(0, size, size=4)
        draw.line((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, size=3)), width=int(rng.integers(1, 3)))
