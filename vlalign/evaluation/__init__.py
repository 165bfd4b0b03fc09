"""Evaluation: zero-shot accuracy, written-label rate, retrieval, divergence and bias metrics."""

from vlalign.evaluation.zero_shot import (
    ZeroShotResult, accuracy, class_text_embeddings, image_embeddings, written_label_rate, zero_shot_evaluate,
)

__all__ = ["ZeroShotResult", "accuracy", "class_text_embeddings", "image_embeddings", "written_label_rate",
           "zero_shot_evaluate"]
