"""Models: the ContrastiveModel interface, MiniCLIP, transformers CLIP, heads and adapters."""

from vlalign.models.base import ContrastiveModel
from vlalign.models.checkpoint import CheckpointError
from vlalign.models.loading import embedded_mini_dir, load_mini_clip, load_model, save_mini_clip
from vlalign.models.mini_clip import MiniCLIP, MiniCLIPConfig

__all__ = ["ContrastiveModel", "CheckpointError", "MiniCLIP", "MiniCLIPConfig", "load_model", "load_mini_clip",
           "save_mini_clip", "embedded_mini_dir"]
