"""Data: the procedural mini world (and its retrieval split), typographic rendering, image folders, Karpathy-split
retrieval sets and preference sets."""

from vlalign.data.image_set import ImageSet
from vlalign.data.mini_world import HELDOUT_CLASSES, INDOMAIN_CLASSES, MiniWorld, WorldConfig, parse_split
from vlalign.data.retrieval_set import RetrievalSet, collate_retrieval
from vlalign.data.retrieval_world import RetrievalWorld, RetrievalWorldConfig
from vlalign.data.shapes import SHAPE_NAMES

__all__ = ["ImageSet", "MiniWorld", "WorldConfig", "parse_split", "SHAPE_NAMES", "HELDOUT_CLASSES", "INDOMAIN_CLASSES",
           "RetrievalSet", "RetrievalWorld", "RetrievalWorldConfig", "collate_retrieval"]
