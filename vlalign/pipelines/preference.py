"""``vlalign train`` for the preference methods: build the data, train, save the model, evaluate."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from vlalign.io import atomic_write_json
from vlalign.training.contrastive_po import PreferenceTrainConfig, save_aligned_model, train_preference


def train_from_config(config: PreferenceTrainConfig, out: Path) -> dict:
    """``vlalign train`` for the preference methods: build the data, train, save, evaluate."""
    from vlalign.data.folder import load_image_folder
    from vlalign.data.preference import (
        RegularizationSet, class_prompts, load_preference_jsonl, preference_from_typographic, typographic_preference_data,
    )
    from vlalign.evaluation.typographic import evaluate_typographic
    from vlalign.models.loading import load_model

    model = load_model(config.model, config.device)
    if config.data is None:
        pref, reg = typographic_preference_data(config.n_pref, config.n_reg, config.data_seed)
    elif config.data.endswith(".jsonl"):
        pref, reg = load_preference_jsonl(config.data, model.image_size), None
    else:
        images = load_image_folder(config.data, model.image_size)
        pref = preference_from_typographic(images)
        reg = RegularizationSet(images.images, class_prompts(images.classnames), images.labels)
    result = train_preference(model, pref, reg, config, out)
    save_aligned_model(result, out, config.model)
    metrics = evaluate_typographic(result.model, model, config.eval_images, config.eval_seed)
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "train_config.json", {k: v for k, v in vars(replace(config)).items()})
    return metrics
