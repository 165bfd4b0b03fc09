"""Adversarial attacks with one contract: images in [0, 1] in, adversarial images in [0, 1] out, inside the
threat model; normalization inside the model; eval mode during the attack; a seed for reproducibility.

``build_attack("apgd-ce", eps=4/255, steps=100)`` builds any registered attack by its command-line name;
``ZeroShotObjective`` / ``RetrievalObjective`` / ``EmbeddingObjective`` / ``CaptionLikelihoodObjective`` /
``ResponseObjective`` (a generative VLM's answer or caption) say what it maximizes.
"""

from vlalign.attacks.base import Attack, AttackResult, LossObjective, Objective, ObjectiveValue
from vlalign.attacks.registry import ATTACKS, attack_names, build_attack, register_attack
from vlalign.attacks.threat_model import format_eps, parse_eps
from vlalign.attacks.objectives import (
    CaptionLikelihoodObjective, EmbeddingObjective, LogitObjective, ResponseObjective, RetrievalObjective,
    ZeroShotObjective,
)

__all__ = [
    "ATTACKS", "Attack", "AttackResult", "Objective", "ObjectiveValue", "LossObjective", "LogitObjective",
    "ZeroShotObjective", "RetrievalObjective", "EmbeddingObjective", "CaptionLikelihoodObjective", "ResponseObjective",
    "attack_names", "build_attack", "register_attack", "parse_eps", "format_eps",
]
