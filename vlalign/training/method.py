"""What a training method is to the one loop (:func:`vlalign.training.loop.fit`).

A method is an ``nn.Module`` that owns the models it trains and everything frozen it needs, and maps a batch to
its losses. The loop owns everything else, in one place: data loading, the finite check, backward, clipping,
accumulation, optimizer and scheduler, weight averaging, logging, checkpoints, resume and data parallelism.

The life of a method in ``fit``:

1. ``streams()`` names its training data: ``{"pref": Stream(dataset), "reg": Stream(dataset)}``. Each dataset
   item is a dict holding at least ``"index"`` (its position in the dataset, an int), so frozen quantities can be
   looked up by it. Every step the loop draws one batch from each stream (seeded, resumable, sharded across
   processes) and passes ``{"pref": batch, "reg": batch, "step": s, "seed": seed}`` to ``forward``; a stream's
   batch is the dict of its collated items. ``step`` and ``seed`` let a method draw randomness (attack starts)
   that depends on (seed, step, item index) alone, so a resumed or data-parallel run draws the same.
2. ``prepare(device)`` runs once before the first step, also on resume: move models to ``device`` and compute
   what never changes (prompt embeddings, reference logits or embeddings of every training item) in fixed
   batches with :func:`vlalign.training.frozen.precompute`, so a resumed run sees bit-identical values.
3. ``forward(batch)`` returns ``{"loss": scalar, <term>: scalar, ...}``; every entry is logged, ``"loss"`` is
   minimized. Statistics that must be global across processes (KTO's reference point) use
   :mod:`vlalign.training.distributed`.
4. ``trainable_module()`` is the module whose parameters with ``requires_grad`` are trained; its state dict is
   what checkpoints hold. BMA/EMA average ``averaged_weights()``: the trained weights as the model computes with
   them (a LoRA layer's W₀ + s·B A, not its factors).
5. ``finish()`` returns the trained model (LoRA merged, gradients off); with weight averaging, the loop first
   hands the average to ``load_averaged_weights()``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from vlalign.models.lora import effective_weights, has_lora_layers, load_named_weights


@dataclass
class Stream:
    """One named source of training batches: a map-style dataset and, optionally, its own batch size
    (default: the loop's ``batch_size``) and collate function (default: ``torch.utils.data.default_collate``)."""

    dataset: Dataset
    batch_size: int | None = None
    collate: Any = None


class Method(nn.Module, ABC):
    """Base class of every training method; see the module docstring for the contract."""

    #: Loop settings this method trains with unless the config says otherwise (optimizer, lr, betas, ...).
    default_train: ClassVar[dict[str, Any]] = {}

    @property
    def label(self) -> str:
        """A short name for progress bars and messages (e.g. ``dpo/full``); the class name by default."""
        return type(self).__name__

    @abstractmethod
    def streams(self) -> dict[str, Stream]:
        """The named training datasets; one batch of each per step."""

    def prepare(self, device: torch.device) -> None:
        """Move to ``device`` and compute frozen quantities once, in fixed batches (default: only the move)."""
        self.to(device)

    @abstractmethod
    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"loss": scalar, <term>: scalar, ...}`` for one batch of every stream."""

    @abstractmethod
    def trainable_module(self) -> nn.Module:
        """The module whose trainable parameters the optimizer updates, checkpoints hold and averaging tracks."""

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimizer parameter groups: weight decay on matrices, none on biases, norms, embeddings, scales. A group
        may carry ``lr_scale``: the loop trains it at that multiple of the run's learning rate."""
        decay, no_decay = [], []
        for name, param in self.trainable_module().named_parameters():
            if param.requires_grad:
                plain = param.dim() < 2 or "pos" in name or "embedding" in name
                (no_decay if plain else decay).append(param)
        return [group for group in ({"params": decay, "weight_decay": weight_decay},
                                    {"params": no_decay, "weight_decay": 0.0}) if group["params"]]

    def averaged_weights(self) -> dict[str, torch.Tensor]:
        """What BMA/EMA average, by name: the trainable weights of ``trainable_module()`` as its forward computes
        with them (:func:`vlalign.models.lora.effective_weights`: a LoRA layer gives its merged weight)."""
        return effective_weights(self.trainable_module())

    def load_averaged_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Make the model compute with ``weights`` (named as :meth:`averaged_weights` names them); ``finish()``
        follows. The default copies them into ``trainable_module()``'s parameters of the same names, so a method
        whose model keeps LoRA layers must merge them first (an average of adapted weights is no rank-r adapter)."""
        module = self.trainable_module()
        if has_lora_layers(module):
            raise TypeError(f"{type(self).__name__} trains LoRA layers: it must merge them in its own "
                            "load_averaged_weights before the averaged weights can be written")
        load_named_weights(module, weights, f"{type(self).__name__}'s weight average")

    def finish(self) -> nn.Module:
        """The trained model, in eval mode with gradients off (default: ``trainable_module()``)."""
        module = self.trainable_module()
        for param in module.parameters():
            param.requires_grad_(False)
        return module.eval()
