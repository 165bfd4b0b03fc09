"""Reading any image file's pixels as 8-bit RGB, faithfully.

``Image.convert("RGB")`` is wrong for several common modes: a 16-bit grey PNG (``I;16``) is clipped at 255 and
turns white, and an alpha channel is dropped, showing whatever colour the transparent pixels happen to hold.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, whatever its mode.

    Rules: 16-bit and 32-bit integer grey (``I;16*``, ``I``) are read on the 16-bit scale (0..65535 -> 0..255,
    values outside clipped); float grey (``F``) is read as [0, 1] when every value lies there, else as
    [0, 255]; an alpha channel or a transparent palette colour is composited over white; every other mode
    (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ...) goes through Pillow's conversion.
    """
    mode = image.mode
    if mode == "I" or mode.startswith("I;16"):
        values = np.asarray(image).astype(np.float64)
        grey = np.round(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2))
    if mode == "F":
        values = np.asarray(image).astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError("float image holds NaN or infinite values")
        scale = 255.0 if values.size and values.min() >= 0 and values.max() <= 1 else 1.0
        grey = np.round(np.clip(values * scale, 0, 255)).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")
