"""Flip or neutralize an attribute with a linear head (contrastive-PO §4.2) on the people world."""

from vlalign.experiments.attribute.config import AttributeExperimentConfig
from vlalign.experiments.attribute.run import attribute_experiment, run_attribute_experiment
from vlalign.experiments.attribute.seeds import aggregate_seeds, attribute_seeds, run_attribute_seeds
from vlalign.experiments.attribute.sweeps import target_checks

__all__ = ["AttributeExperimentConfig", "aggregate_seeds", "attribute_experiment", "attribute_seeds",
           "run_attribute_experiment", "run_attribute_seeds", "target_checks"]
