"""Geometry of the mini world's twelve shape classes, drawn as masks with PIL."""

from __future__ import annotations

import math

import numpy as np
from PIL import ImageDraw


def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [(radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


def _star() -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        r = 1.0 if k % 2 == 0 else 0.42
        a = -math.pi / 2 + math.pi * k / 5
        points.append((r * math.cos(a), r * math.sin(a)))
    return points


def _heart() -> list[tuple[float, float]]:
    ts = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    x = 16 * np.sin(ts) ** 3 / 17
    y = -(13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts)) / 17
    return list(zip(x.tolist(), (y + 0.1).tolist()))


POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "triangle": _regular(3),
    "star": _star(),
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
              (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
    "heart": _heart(),
    "arrow": [(-1, -0.28), (0.15, -0.28), (0.15, -0.7), (1, 0), (0.15, 0.7), (0.15, 0.28), (-1, 0.28)],
    "diamond": [(0, -1), (0.58, 0), (0, 1), (-0.58, 0)],
    "hexagon": _regular(6, phase=0.0),
    "bolt": [(-0.15, -1), (0.55, -1), (0.12, -0.18), (0.55, -0.18), (-0.35, 1), (-0.05, 0.12), (-0.5, 0.12)],
}

SHAPE_NAMES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "heart", "ring", "arrow", "moon", "diamond", "hexagon", "bolt",
)


def _transform(points: list[tuple[float, float]], cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in points]


def draw_shape_mask(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float) -> None:
    """Draw ``shape`` (filled, value 255) of radius ``r`` centred at (cx, cy), rotated by ``angle`` radians."""
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        inner = 0.58 * r
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    elif shape == "moon":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        ox, oy = cx + 0.5 * r * math.cos(angle), cy + 0.5 * r * math.sin(angle)
        cut = 0.9 * r
        draw.ellipse((ox - cut, oy - cut, ox + cut, oy + cut), fill=0)
    elif shape in POLYGONS:
        draw.polygon(_transform(POLYGONS[shape], cx, cy, r, angle), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPE_NAMES}")
