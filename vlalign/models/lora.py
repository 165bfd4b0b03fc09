"""LoRA adapters on an image tower through peft, and merging them back into plain weights.

Adapters are injected from the model's root, addressed by their full names, so that peft replaces each layer in
its real parent. (A tower may be a view that groups modules owned elsewhere — transformers CLIP's image tower is
its vision model plus ``visual_projection`` — and a layer replaced inside such a view would never run.)
"""

from __future__ import annotations

import re
import sys

import torch
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


def _lora_layer_class() -> type | None:
    """peft's LoraLayer, or None when peft was never imported (then no module can hold one)."""
    return getattr(sys.modules.get("peft.tuners.lora"), "LoraLayer", None)


def effective_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights of ``module`` as its forward computes with them, detached.

    A LoRA layer gives its base weight plus its adapter product (s·B A; α·s·B A under AdvLoRA's scale), named
    ``<layer>.weight``, as the plain layer is named once merged; every other trainable parameter is given as it is.
    Weight averaging averages these, so the average of an adapter run is the average of the model's weights
    θ_t (contrastive-PO eq. 37) and not the product of separately averaged factors (the product is bilinear in
    them)."""
    lora_layer = _lora_layer_class()
    weights: dict[str, torch.Tensor] = {}
    inside: set[int] = set()
    if lora_layer is not None:
        for name, child in module.named_modules():
            if isinstance(child, lora_layer):
                base = child.get_base_layer()
                delta = sum(child.get_delta_weight(adapter) for adapter in child.active_adapters)
                weights[f"{name}.weight" if name else "weight"] = (base.weight + delta).detach()
                inside |= {id(p) for p in child.parameters()}
    for name, param in module.named_parameters():
        if param.requires_grad and id(param) not in inside:
            weights[name] = param.detach()
    return weights


def has_lora_layers(module: nn.Module) -> bool:
    """Whether ``module`` still holds an unmerged peft LoRA layer."""
    lora_layer = _lora_layer_class()
    return lora_layer is not None and any(isinstance(m, lora_layer) for m in module.modules())


@torch.no_grad()
def load_named_weights(module: nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
    """Copy ``weights`` into the parameters of ``module`` of the same names; ``what`` names the weights in the
    error raised when one has no parameter of its name and shape."""
    params = dict(module.named_parameters())
    for name, value in weights.items():
        if name not in params or params[name].shape != value.shape:
            found = "no such parameter" if name not in params else f"shape {tuple(params[name].shape)}"
            raise ValueError(f"{what}: '{name}' {tuple(value.shape)} does not fit the model ({found})")
        params[name].copy_(value)
