"""LoRA adapters on an image tower through peft, and merging them back into plain weights."""

from __future__ import annotations

from torch import nn


def linear_leaf_names(module: nn.Module) -> list[str]:
    """Distinct attribute names of the ``nn.Linear`` layers inside ``module`` (peft's ``target_modules``)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in module.named_modules() if isinstance(m, nn.Linear) and name})


def add_lora(module: nn.Module, rank: int = 8, alpha: float = 16.0, targets: list[str] | None = None) -> list[nn.Parameter]:
    """Inject LoRA adapters (B initialized at zero, so the function is unchanged) into ``module`` in place;
    freezes everything else in it and returns the LoRA parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = targets or linear_leaf_names(module)
    if not targets:
        raise ValueError("the image tower has no nn.Linear layers to put LoRA adapters on")
    for param in module.parameters():
        param.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets), module)
    params = [p for n, p in module.named_parameters() if "lora_" in n]
    for param in params:
        param.requires_grad_(True)
    if not params:
        raise ValueError(f"no LoRA parameters were created for targets {targets}")
    return params


def merge_lora(module: nn.Module) -> None:
    """Fold every LoRA adapter in ``module`` into its base layer and put the plain layer back in its place."""
    from peft.tuners.lora import LoraLayer

    for name, child in list(module.named_modules()):
        if isinstance(child, LoraLayer):
            child.merge()
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, attr, child.get_base_layer())
