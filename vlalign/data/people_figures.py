"""Drawing one figure of the people world (:mod:`vlalign.data.people`): its body style, pose and held object.

Coordinates are in figure units: x to the right of the figure's centre line, y upwards from its feet, both as
fractions of the figure height H. The figure faces right; mirroring happens in :class:`FigurePainter`.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

def _torso(attribute: int) -> list[tuple[float, float]]:
    if attribute == 0:  # A: narrow shoulders, wide triangular skirt
        return [(-0.08, 0.74), (0.08, 0.74), (0.27, 0.30), (-0.27, 0.30)]
    # B: broad shoulders, narrow straight torso
    return [(-0.21, 0.75), (0.21, 0.75), (0.21, 0.69), (0.10, 0.64), (0.10, 0.40), (-0.10, 0.40), (-0.10, 0.64), (-0.21, 0.69)]


def _shoulders(attribute: int) -> tuple[tuple[float, float], tuple[float, float]]:
    half = 0.08 if attribute == 0 else 0.19
    return (-half, 0.72), (half, 0.72)


class FigurePainter:
    """Draws in figure units onto a supersampled RGBA layer."""

    def __init__(self, layer: Image.Image, x0: float, y0: float, height: float, mirror: bool) -> None:
        self.draw = ImageDraw.Draw(layer)
        self.x0, self.y0, self.h, self.mirror = x0, y0, height, mirror
        self.limb = max(2, int(round(height * 0.075)))

    def p(self, x: float, y: float) -> tuple[float, float]:
        return (self.x0 + (-x if self.mirror else x) * self.h, self.y0 - y * self.h)

    def line(self, points: list[tuple[float, float]], colour: tuple, width: float | None = None) -> None:
        w = self.limb if width is None else max(1, int(round(width * self.h)))
        self.draw.line([self.p(*q) for q in points], fill=colour, width=w, joint="curve")

    def polygon(self, points: list[tuple[float, float]], colour: tuple) -> None:
        self.draw.polygon([self.p(*q) for q in points], fill=colour)

    def circle(self, x: float, y: float, r: float, colour: tuple, outline: tuple | None = None, width: float = 0.0) -> None:
        cx, cy = self.p(x, y)
        rr = r * self.h
        self.draw.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=colour, outline=outline,
                          width=max(1, int(round(width * self.h))) if outline is not None else 0)

    def ring(self, x: float, y: float, r: float, colour: tuple, width: float) -> None:
        cx, cy = self.p(x, y)
        rr = r * self.h
        self.draw.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), outline=colour, width=max(1, int(round(width * self.h))))

    def box(self, x0: float, y0: float, x1: float, y1: float, colour: tuple) -> None:
        self.polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], colour)


def draw_figure(pt: FigurePainter, attribute: int, name: str, colours: dict[str, tuple], occluded: bool = False) -> None:
    """Draw one figure of body style ``attribute`` (0: A, 1: B) doing ``name`` (one of
    :data:`vlalign.data.people.ACTIVITIES`) in ``colours`` (body, skin, limb, object, object2); ``occluded`` holds
    the object (book or bag) in front of the torso."""
    body, skin, limb, obj, obj2 = (colours[k] for k in ("body", "skin", "limb", "object", "object2"))
    left_sh, right_sh = _shoulders(attribute)
    hip_l, hip_r = (-0.06, 0.36), (0.06, 0.36)
    # Arms: (left hand, right hand) per activity; the right hand holds the object.
    arms = {
        "holding an umbrella": ((-0.22, 0.42), (0.24, 0.86)),
        "kicking a ball": ((-0.30, 0.55), (0.30, 0.58)),
        "reading a book": ((-0.33, 0.62), (0.33, 0.62)) if occluded else ((0.16, 0.62), (0.30, 0.70)),
        "flying a kite": ((-0.24, 0.45), (0.30, 1.00)),
        "playing a guitar": ((0.02, 0.62), (0.20, 0.48)),
        "carrying a bag": ((-0.33, 0.70), (0.33, 0.70)) if occluded else ((-0.22, 0.42), (0.30, 0.40)),
        "walking a dog": ((-0.22, 0.42), (0.32, 0.48)),
        "riding a bike": ((0.30, 0.60), (0.34, 0.62)),
    }[name]
    # Legs: (left foot, right foot), with knees for the poses that bend them.
    if name == "kicking a ball":
        legs = [[hip_l, (-0.10, 0.0)], [hip_r, (0.22, 0.20), (0.36, 0.12)]]
    elif name == "riding a bike":
        legs = [[hip_l, (0.14, 0.22), (0.02, 0.10)], [hip_r, (0.18, 0.26), (0.12, 0.12)]]
    elif name == "walking a dog":
        legs = [[hip_l, (-0.14, 0.0)], [hip_r, (0.14, 0.0)]]
    else:
        legs = [[hip_l, (-0.09, 0.0)], [hip_r, (0.09, 0.0)]]

    # Objects behind the figure.
    if name == "riding a bike":
        for wx in (-0.30, 0.36):
            pt.ring(wx, 0.16, 0.16, obj, 0.045)
        pt.line([(-0.30, 0.16), (0.04, 0.16), (0.36, 0.16)], obj2, 0.035)
        pt.line([(0.04, 0.16), (0.0, 0.40), (-0.30, 0.16)], obj2, 0.035)
        pt.line([(0.04, 0.16), (0.30, 0.58), (0.36, 0.16)], obj2, 0.035)
    if name == "holding an umbrella":
        cx, cy = pt.p(0.12, 1.06)
        rr = 0.40 * pt.h
        pt.draw.pieslice((cx - rr, cy - rr * 0.75, cx + rr, cy + rr * 0.75), 180, 360, fill=obj)
        pt.line([(0.12, 1.06), (0.24, 0.86), (0.26, 0.80)], obj2, 0.035)

    for leg in legs:
        pt.line(leg, limb)
    pt.polygon(_torso(attribute), body)
    pt.circle(0.0, 0.88, 0.115, skin)
    if occluded:
        # Arms start behind the object at the same points for both styles, so only the hands show.
        pt.line([(-0.12, 0.62), arms[0]], limb)
        pt.line([(0.12, 0.62), arms[1]], limb)
    else:
        pt.line([left_sh, (left_sh[0] - 0.03, 0.58), arms[0]], limb)
        pt.line([right_sh, (right_sh[0] + 0.05, 0.60), arms[1]], limb)

    # Objects in front of the figure.
    if name == "kicking a ball":
        pt.circle(0.50, 0.10, 0.10, obj, outline=obj2, width=0.03)
    elif name == "reading a book" and occluded:
        # A large open book held up in front of the body (two pages in a V): the torso, and so the style, is hidden.
        pt.polygon([(-0.34, 0.84), (0.0, 0.77), (0.0, 0.24), (-0.34, 0.24)], obj)
        pt.polygon([(0.34, 0.84), (0.0, 0.77), (0.0, 0.24), (0.34, 0.24)], obj)
        pt.line([(0.0, 0.24), (0.0, 0.77)], obj2, 0.03)
    elif name == "reading a book":
        pt.box(0.18, 0.58, 0.46, 0.80, obj)
        pt.line([(0.32, 0.58), (0.32, 0.80)], obj2, 0.03)
    elif name == "flying a kite":
        kx, ky = 0.52, 1.16
        pt.polygon([(kx, ky + 0.12), (kx + 0.09, ky), (kx, ky - 0.12), (kx - 0.09, ky)], obj)
        pt.line([(0.30, 1.00), (kx, ky - 0.12)], obj2, 0.015)
        pt.line([(kx, ky - 0.12), (kx - 0.05, ky - 0.22), (kx + 0.02, ky - 0.30)], obj2, 0.025)
    elif name == "playing a guitar":
        pt.line([(0.16, 0.44), (-0.20, 0.74)], obj2, 0.05)
        pt.circle(0.22, 0.40, 0.11, obj)
        pt.circle(0.30, 0.48, 0.08, obj)
    elif name == "carrying a bag" and occluded:
        # A large bag carried in both arms in front of the body.
        pt.line([(-0.18, 0.76), (-0.12, 0.90), (0.12, 0.90), (0.18, 0.76)], obj2, 0.035)
        pt.box(-0.32, 0.24, 0.32, 0.72, obj)
        pt.box(-0.32, 0.72, 0.32, 0.79, obj2)
    elif name == "carrying a bag":
        pt.line([(0.24, 0.34), (0.30, 0.42), (0.36, 0.34)], obj2, 0.03)
        pt.box(0.20, 0.12, 0.42, 0.34, obj)
    elif name == "walking a dog":
        pt.line([(0.32, 0.48), (0.52, 0.22)], obj2, 0.015)
        pt.box(0.44, 0.10, 0.72, 0.20, obj)                     # body
        pt.circle(0.76, 0.24, 0.07, obj)                        # head
        for lx in (0.47, 0.53, 0.63, 0.69):
            pt.line([(lx, 0.12), (lx, 0.0)], obj, 0.035)
        pt.line([(0.45, 0.18), (0.38, 0.28)], obj, 0.03)        # tail
    elif name == "riding a bike":
        pt.line([(0.30, 0.58), (0.36, 0.66)], obj2, 0.035)       # handlebar


# Figure extent in figure units (left, right, bottom, top), unmirrored, with the widest objects.
FIGURE_EXTENT = (-0.46, 0.84, 0.0, 1.34)
