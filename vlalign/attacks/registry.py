"""Attacks by name: the registry behind ``build_attack`` and ``--attack``; adding an attack is one entry."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field


from vlalign.attacks.base import Attack
from vlalign.attacks.threat_model import NORMS


# ------------------------------------------------------------------------------------------------ registry

@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: ``"module:Class"`` and the keyword arguments that make it this variant."""

    target: str
    defaults: dict = field(default_factory=dict)
    description: str = ""

    def resolve(self) -> type[Attack]:
        module_name, class_name = self.target.split(":")
        return getattr(importlib.import_module(module_name), class_name)


ATTACKS: dict[str, AttackSpec] = {
    "pgd": AttackSpec("vlalign.attacks.pgd:PGD", {"norm": "linf"}, "PGD, ℓ∞ (Madry et al. 2018)"),
    "pgd-l2": AttackSpec("vlalign.attacks.pgd:PGD", {"norm": "l2"}, "PGD, ℓ2 (Madry et al. 2018)"),
    "fgsm": AttackSpec("vlalign.attacks.fgsm:FGSM", {}, "FGSM, ℓ∞ (Goodfellow et al. 2015)"),
    "apgd-ce": AttackSpec("vlalign.attacks.apgd:APGD", {"loss": "ce"}, "APGD-CE, ℓ∞ (Croce & Hein 2020)"),
    "apgd-dlr": AttackSpec("vlalign.attacks.apgd:APGD", {"loss": "dlr"}, "APGD-DLR, ℓ∞ (Croce & Hein 2020)"),
    "apgd-t": AttackSpec("vlalign.attacks.apgd:APGDTargeted", {}, "APGD-T, targeted DLR, ℓ∞ (Croce & Hein 2020)"),
    "square": AttackSpec("vlalign.attacks.square:Square", {}, "Square, score-based black-box, ℓ∞ (Andriushchenko et al. 2020)"),
    "transfer": AttackSpec("vlalign.attacks.transfer:TransferAttack", {}, "PGD on a surrogate model, evaluated on the target"),
    "embedding": AttackSpec("vlalign.attacks.embedding:EmbeddingAttack", {}, "label-free embedding-space PGD (FARE)"),
    "typographic": AttackSpec("vlalign.attacks.typographic:TypographicAttack", {}, "write another class name (unbounded)"),
}

#: Options the command line passes to every attack; each attack takes the ones it has.
COMMON_OPTIONS = ("steps", "restarts", "queries", "surrogate")


def register_attack(name: str, target: str, defaults: dict | None = None, description: str = "") -> None:
    """Register ``"module:Class"`` (an :class:`Attack` subclass) under ``name`` with fixed keyword ``defaults``."""
    spec = AttackSpec(target, dict(defaults or {}), description)
    if name in ATTACKS and ATTACKS[name] != spec:
        raise ValueError(f"attack {name!r} is already registered as {ATTACKS[name].target}")
    ATTACKS[name] = spec


def attack_names() -> list[str]:
    """Names accepted by :func:`build_attack` (and ``--attack``)."""
    return sorted(ATTACKS)


def attack_class(name: str) -> type[Attack]:
    """The class registered under ``name``."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; expected one of {attack_names()}")
    return ATTACKS[name].resolve()


def build_attack(name: str, eps: float | None = None, **options: object) -> Attack:
    """Build the attack registered as ``name``.

    Options in :data:`COMMON_OPTIONS` (``steps``, ``restarts``, ...) go to the attacks that take them and are
    skipped by the others; any other option must be a parameter of the attack, or this raises a TypeError.
    """
    cls = attack_class(name)
    params = inspect.signature(cls.__init__).parameters
    kwargs = dict(ATTACKS[name].defaults)
    for key, value in options.items():
        if key in params:
            if value is not None:
                kwargs[key] = value
        elif key not in COMMON_OPTIONS:
            accepted = sorted(k for k in params if k != "self")
            raise TypeError(f"attack {name!r} takes no option {key!r}; it takes {accepted}")
    if "eps" in params:
        kwargs["eps"] = eps
    return cls(**kwargs)


def attack_norm(name: str) -> str:
    """Threat model of the attack registered as ``name``: "linf", "l2" or "unbounded"."""
    return ATTACKS[name].defaults.get("norm", attack_class(name).norm)


def is_bounded(name: str) -> bool:
    """Whether the attack registered as ``name`` has an ε-ball threat model."""
    return attack_norm(name) in NORMS


def split_attack_names(text: str | Sequence[str]) -> list[str]:
    """``'apgd-ce,pgd'`` -> ``['apgd-ce', 'pgd']``, each checked against the registry."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else [str(n).strip() for n in text]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"no attack named; expected a comma-separated list from {attack_names()}")
    for n in names:
        attack_class(n)
    if len(set(names)) != len(names):
        raise ValueError(f"attack list has duplicates: {names}")
    return names
