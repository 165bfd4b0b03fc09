"""Flip or neutralize an attribute with a linear head (contrastive-PO §4.2) on the people world."""

from vlalign.experiments.attribute.config import AttributeExperimentConfig
from vlalign.experiments.attribute.run import attribute_experiment, run_attribute_experiment
from vlalign.experiments.attribute.sweeps import target_checks

__all__ = ["AttributeExperimentConfig", "attribute_experiment", "run_attribute_experiment", "target_checks"]
