"""LoRA adapters on an image tower through peft, and merging them back into plain weights.

Adapters are injected from the model's root, addressed by their full names, so that peft replaces each layer in
its real parent. (A tower may be a view that groups modules owned elsewhere — transformers CLIP's image tower is
its vision model plus ``visual_projection`` — and a layer replaced inside such a view would never run.)
"""

from __future__ import annotations

import re

from torch import nn


def linear_leaf_names(module: nn.Module) -> list[str]:
    """Distinct attribute names of the ``nn.Linear`` layers inside ``module`` (peft's ``target_modules``)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in module.named_modules() if isinstance(m, nn.Linear) and name})


def tower_linear_names(root: nn.Module, tower: nn.Module, targets: list[str] | None = None) -> list[str]:
    """Full names, within ``root``, of the ``nn.Linear`` layers of ``tower`` (only those whose attribute name is
    in ``targets``, when given)."""
    inside = {id(m) for m in tower.modules() if isinstance(m, nn.Linear)}
    names = [name for name, m in root.named_modules() if id(m) in inside and name]
    if targets is not None:
        names = [n for n in names if n.rsplit(".", 1)[-1] in targets]
    return names


def add_lora(root: nn.Module, tower: nn.Module | None = None, rank: int = 8, alpha: float = 16.0,
             targets: list[str] | None = None) -> list[nn.Parameter]:
    """Inject LoRA adapters (B initialized at zero, so the function is unchanged) into the linear layers of
    ``tower`` (default: all of ``root``), in place; freezes everything else in ``root`` and returns the LoRA
    parameters. Re-read a view-like tower from its model afterwards: its layers were replaced in their parents."""
    from peft import LoraConfig, inject_adapter_in_model

    names = tower_linear_names(root, tower if tower is not None else root, targets)
    if not names:
        raise ValueError(f"no nn.Linear layers to put LoRA adapters on (targets {targets})")
    for param in root.parameters():
        param.requires_grad_(False)
    pattern = "^(" + "|".join(re.escape(n) for n in names) + ")$"
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=pattern), root)
    params = [p for n, p in root.named_parameters() if "lora_" in n]
    for param in params:
        param.requires_grad_(True)
    return params


def merge_lora(root: nn.Module) -> None:
    """Fold every LoRA adapter in ``root`` into its base layer and put the plain layer back in its place."""
    from peft.tuners.lora import LoraLayer

    for name, child in list(root.named_modules()):
        if isinstance(child, LoraLayer):
            child.merge()
            parent_name, _, attr = name.rpartition(".")
            parent = root.get_submodule(parent_name) if parent_name else root
            setattr(parent, attr, child.get_base_layer())
