"""DejaVu fonts from matplotlib's package data, so word rendering is identical on every machine."""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

FONT_NAMES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
)


@lru_cache(maxsize=1)
def font_dir() -> Path:
    """The folder of TTF files shipped inside matplotlib."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    missing = [n for n in FONT_NAMES if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(f"matplotlib's font folder {path} lacks {missing}; reinstall matplotlib")
    return path


@lru_cache(maxsize=512)
def load_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    """A cached FreeType font of ``size`` pixels from the DejaVu family."""
    return ImageFont.truetype(str(font_dir() / name), size)


@lru_cache(maxsize=None)
def _codepoints(name: str) -> frozenset[int]:
    from fontTools.ttLib import TTFont  # a matplotlib dependency

    return frozenset(TTFont(str(font_dir() / name), lazy=True)["cmap"].getBestCmap())


def missing_glyphs(name: str, text: str) -> list[str]:
    """Characters of ``text`` the font ``name`` has no glyph for (they would render as empty boxes); spaces and
    invisible format characters (zero-width joiners, ...) need none."""
    covered = _codepoints(name)
    return sorted({c for c in text if ord(c) not in covered and not c.isspace() and unicodedata.category(c) != "Cf"})
