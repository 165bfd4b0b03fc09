"""Data: the procedural mini world, typographic rendering, image folders and preference sets."""

from vlalign.data.image_set import ImageSet
from vlalign.data.mini_world import HELDOUT_CLASSES, INDOMAIN_CLASSES, MiniWorld, WorldConfig, parse_split
from vlalign.data.shapes import SHAPE_NAMES

__all__ = ["ImageSet", "MiniWorld", "WorldConfig", "parse_split", "SHAPE_NAMES", "HELDOUT_CLASSES", "INDOMAIN_CLASSES"]
