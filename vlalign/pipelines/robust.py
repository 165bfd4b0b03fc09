"""``vlalign train`` for TeCoA and FARE: fine-tune, evaluate clean and robust accuracy, save the model."""

from __future__ import annotations

from pathlib import Path

from vlalign.attacks.threat_model import format_eps, parse_eps
from vlalign.config import config_to_dict
from vlalign.data.mini_world import MiniWorld
from vlalign.evaluation.robust import robust_evaluate
from vlalign.io import atomic_write_json
from vlalign.models.loading import save_model
from vlalign.training.robust_finetune import RobustFinetuneConfig, robust_finetune


def train_from_config(config: RobustFinetuneConfig, out: Path) -> dict:
    """Fine-tune, evaluate clean and robust accuracy on fresh images, write the model folder and metrics."""
    out = Path(out)
    model, train_stats = robust_finetune(config, out)
    eval_images = MiniWorld().sample("clean", config.eval_images, config.eval_seed)
    evaluation = robust_evaluate(model, eval_images, config.eval_attacks, [parse_eps(e) for e in config.eval_eps],
                                 steps=config.eval_steps, seed=config.eval_seed, templates=config.templates,
                                 progress=config.progress)
    result = evaluation.metrics()
    metrics = {"method": config.method, "eps": format_eps(config.epsilon), "clean": result["clean"],
               "worst_case": result["worst_case"], "robust": result["robust"], "warnings": result["warnings"],
               "train": train_stats}
    save_model(model, out, info={"method": config.method, "base_model": config.model})
    atomic_write_json(out / "train_config.json", config_to_dict(config))
    atomic_write_json(out / "metrics.json", metrics)
    return metrics
