"""Adapters on a ContrastiveModel's towers: AdvLoRA (LoRA through peft with clustering-based initialization,
parameter alignment and an adaptive scale) and the k-means it initializes from."""

from vlalign.models.adapters.advlora import (
    AdapterSpec, AdvLoRAAdapter, alignment_penalty, apply_advlora, default_targets, load_peft_adapter,
    trainable_parameter_count,
)
from vlalign.models.adapters.kmeans import kmeans

__all__ = ["AdapterSpec", "AdvLoRAAdapter", "alignment_penalty", "apply_advlora", "default_targets", "kmeans",
           "load_peft_adapter", "trainable_parameter_count"]
