"""AdvLoRA (Ji et al. 2024, arXiv 2404.13425): LoRA with clustering-based initialization, parameter alignment and
an adaptive scale, injected through peft into a ContrastiveModel's towers.

A targeted ``nn.Linear`` with weight ``W₀`` ``[out, in]`` (torch's layout, ``y = x W₀ᵀ + b``) becomes
``y = x W_baseᵀ + b + s·α·x Aᵀ Bᵀ`` with peft's ``lora_A`` = A ``[r, in]``, ``lora_B`` = B ``[out, r]``, peft's
fixed scaling ``s = lora_alpha / r`` and the trainable scale α; the adapter product is ``ΔW = s·α·B A``. In the
paper's row-vector notation this is Y = XW₀ + α·XAB.

1. **Clustering-based initialization** (``cluster_init``). The summary says only "use cluster centres of the
   pre-trained weight matrices as LoRA initialization, with the rank as the number of clusters". Choices made
   here: the rows of W₀ (one per output unit: each unit's incoming weights) are clustered by k-means with
   k = r (:func:`vlalign.models.adapters.kmeans.kmeans`, seeded per layer); A holds the centres C ``[r, in]``
   and B the one-hot assignment M ``[out, r]`` of each row to its centre, so B A = M C is the k-means
   reconstruction of W₀ (every row replaced by its cluster's centre), the best rank-r approximation among
   those that give each unit one prototype (a Conv2d's rows are its output filters flattened to ``[out, in·k·k]``;
   A is then peft's k x k convolution into r channels holding the centres, B its 1x1 one). Scales: A = c·C and
   B = M / (c·s·α₀), with c chosen so that
   ``‖A‖_F = ‖B‖_F`` (balanced factors keep the two learning rates comparable), so the initial product is
   exactly M C. That product is subtracted from the frozen base, ``W_base = W₀ − ΔW_init``, so the adapted
   model's outputs equal the pre-trained model's at initialization. Without it, peft's LoRA init is used
   (A Kaiming-uniform, B = 0, nothing subtracted).
2. **Parameter alignment** (``alignment_weight`` > 0, applied by the training method): the summary's penalty
   ``min ‖W₀ − AB‖²`` keeps the low-rank product close to the pre-trained weights' structure.
   :meth:`AdvLoRAAdapter.alignment_penalty` returns, averaged over adapted layers,
   ``‖W₀ − ΔW‖²_F / ‖W₀‖²_F`` (``alignment_target="pretrained"``, the paper's formula; normalized per layer so
   that layers of different sizes weigh alike) or ``‖ΔW − ΔW_init‖²_F / ‖W₀‖²_F`` (``"init"``: the relative
   change of the effective weight W_base + ΔW from W₀, an L2-SP reading). With clustering init the paper's
   form starts at the relative k-means residual and pulls the product towards W₀'s dominant structure; with
   peft's zero init it starts at 1 and pulls ΔW towards W₀ itself (doubling the effective weight), which is
   why the "init" target exists for ablations that switch clustering off.
3. **Adaptive update** (``adaptive_alpha``): α is a trainable scalar per adapted layer (initialized at
   ``alpha_init``), a ``torch.nn.utils.parametrize`` parametrization on ``lora_B.weight`` (B_used = α·B), so
   peft's forward, ``get_delta_weight`` and ``merge`` all see it; :meth:`AdvLoRAAdapter.fold_alphas` bakes it
   into B before saving. Without it, α ≡ 1 and the product is peft's plain s·B A.

Ranks may differ per layer (``rank_pattern``, peft's): each layer's k-means then has that layer's rank as k.
With clustering init the change of the effective weight from W₀ is ``ΔW − ΔW_init`` = s·α·B A − M C, of rank up
to 2r for the parameters of a rank-r LoRA (so the exported peft adapter has rank 2r); peft's zero-initialized
LoRA changes W₀ by a product of rank at most r.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from vlalign.io import atomic_write_json, save_tensors
from vlalign.models.adapters.kmeans import kmeans
from vlalign.models.base import ContrastiveModel

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."


@dataclass
class AdapterSpec:
    """Where the adapters go and which AdvLoRA parts are on."""

    #: LoRA rank r (= k-means clusters per layer).
    rank: int = 8
    #: Per-layer ranks overriding ``rank``: target name (matched as the targets are) -> rank, e.g. {"stem.0": 16}.
    #: Every layer keeps the scaling lora_alpha / rank (peft's alpha_pattern is set to match).
    rank_pattern: dict[str, int] = field(default_factory=dict)
    #: peft's lora_alpha; None means r, i.e. a fixed scaling s = lora_alpha / r of 1.
    lora_alpha: float | None = None
    #: Leaf or dotted-suffix names of the nn.Linear layers to adapt in the image tower (peft's matching rule);
    #: None = the backend's default (attention projections, see :func:`default_targets`).
    image_targets: list[str] | None = None
    #: Same for the text tower: an empty list (the default) leaves it frozen and unadapted, None = the default.
    text_targets: list[str] | None = field(default_factory=list)
    cluster_init: bool = True
    adaptive_alpha: bool = True
    alpha_init: float = 1.0
    kmeans_iterations: int = 50
    #: Seed of the clustering init's k-means and of peft's random lora_A (plain LoRA), independent of the global RNG.
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rank < 1 or any(not isinstance(r, int) or r < 1 for r in self.rank_pattern.values()):
            raise ValueError(f"rank and every rank_pattern rank must be integers >= 1, got {self.rank} and "
                             f"{self.rank_pattern}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if not self.alpha_init > 0:
            raise ValueError(f"alpha_init must be > 0, got {self.alpha_init}")
        if self.kmeans_iterations < 1:
            raise ValueError(f"kmeans_iterations must be >= 1, got {self.kmeans_iterations}")


def default_targets(model: ContrastiveModel, tower: Literal["image", "text"] = "image") -> list[str]:
    """The attention projections of ``model``'s tower (LoRA's usual targets), by backend."""
    from vlalign.models.hf_blip import HFBlip
    from vlalign.models.hf_clip import HFCLIP
    from vlalign.models.mini_clip import MiniCLIP

    if isinstance(model, MiniCLIP):
        return ["attn.qkv", "attn.proj"]
    if isinstance(model, HFCLIP):
        return ["q_proj", "k_proj", "v_proj", "out_proj"]
    if isinstance(model, HFBlip):
        if tower == "image":
            return ["self_attn.qkv", "self_attn.projection"]
        # ".attention." excludes BLIP's cross-attention, which ITC never runs.
        return ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"]
    raise ValueError(f"no default LoRA targets for {type(model).__name__}; set the targets explicitly")


def resolve_targets(module: nn.Module, names: list[str]) -> list[str]:
    """Paths (inside ``module``) of the nn.Linear or nn.Conv2d layers whose path equals a name or ends with
    "." + name. (peft adapts a Conv2d with A a convolution of the layer's kernel into r channels and B a 1x1
    convolution; its rows are the output filters, flattened.)"""
    paths = [path for path, child in module.named_modules() if path and isinstance(child, (nn.Linear, nn.Conv2d))
             and any(path == n or path.endswith("." + n) for n in names)]
    if not paths:
        raise ValueError(f"no nn.Linear or nn.Conv2d layer matches the LoRA targets {names}")
    return paths


def layer_ranks(paths: list[str], spec: AdapterSpec) -> dict[str, int]:
    """The rank of every adapted layer: ``spec.rank`` unless a ``spec.rank_pattern`` name matches its path (the
    targets' rule: equal, or a dotted suffix). A pattern name that matches no layer, or a layer matched by two
    names, is an error."""
    matches = {name: [p for p in paths if p == name or p.endswith("." + name)] for name in spec.rank_pattern}
    unmatched = [name for name, found in matches.items() if not found]
    if unmatched:
        raise ValueError(f"rank_pattern names {unmatched} match no adapted layer (adapted: {paths})")
    ranks = {path: spec.rank for path in paths}
    for path in paths:
        names = [name for name, found in matches.items() if path in found]
        if len(names) > 1:
            raise ValueError(f"layer {path} is matched by more than one rank_pattern name: {names}")
        if names:
            ranks[path] = spec.rank_pattern[names[0]]
    return ranks


def alignment_penalty(delta: torch.Tensor, target: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``‖target − delta‖²_F / ‖reference‖²_F`` (see the module docstring: target W₀ or ΔW_init, reference W₀)."""
    if delta.shape != target.shape or delta.shape != reference.shape:
        raise ValueError(f"shapes differ: delta {tuple(delta.shape)}, target {tuple(target.shape)}, "
                         f"reference {tuple(reference.shape)}")
    return (target - delta).pow(2).sum() / reference.pow(2).sum().clamp_min(1e-12)


class ScaleParametrization(nn.Module):
    """B ↦ α·B with a trainable scalar α: AdvLoRA's adaptive update, visible to peft's merge."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.alpha * weight


@dataclass
class _Layer:
    path: str           # inside the ContrastiveModel
    layer: nn.Module    # the peft LoraLayer
    initial_a: torch.Tensor  # ΔW_init = initial_b @ initial_a, flattened to 2-D [r, in·k·k] and [out, r]
    initial_b: torch.Tensor  # (zero-size when peft's init left ΔW_init = 0)


def _named(model: nn.Module, module: nn.Module) -> str:
    for path, child in model.named_modules():
        if child is module:
            return path
    raise ValueError("module is not part of the model")


class AdvLoRAAdapter:
    """Handle on the adapters :func:`apply_advlora` put into a model: penalty, scales, merge and export."""

    def __init__(self, model: ContrastiveModel, spec: AdapterSpec, layers: list[_Layer]) -> None:
        self.model = model
        self.spec = spec
        self.layers = layers

    def to(self, device: torch.device | str) -> "AdvLoRAAdapter":
        for record in self.layers:
            record.initial_a, record.initial_b = record.initial_a.to(device), record.initial_b.to(device)
        return self

    def delta(self, record: _Layer) -> torch.Tensor:
        """The current adapter product ΔW = s·α·B A of one layer (differentiable), in the base weight's layout."""
        return record.layer.get_delta_weight("default")

    def initial_delta(self, record: _Layer) -> torch.Tensor:
        weight = record.layer.get_base_layer().weight
        if record.initial_a.numel() == 0:
            return torch.zeros_like(weight)
        return (record.initial_b @ record.initial_a).view_as(weight)

    def alignment_penalty(self, target: Literal["pretrained", "init"] = "pretrained") -> torch.Tensor:
        """Mean over adapted layers of :func:`alignment_penalty` (the module docstring says what and why)."""
        if target not in ("pretrained", "init"):
            raise ValueError(f"alignment target must be 'pretrained' or 'init', got {target!r}")
        terms = []
        for record in self.layers:
            initial = self.initial_delta(record)
            pretrained = record.layer.get_base_layer().weight.detach() + initial
            terms.append(alignment_penalty(self.delta(record), pretrained if target == "pretrained" else initial, pretrained))
        return torch.stack(terms).mean()

    def alphas(self) -> dict[str, float]:
        """The adaptive scale α of every adapted layer (1.0 everywhere when adaptive_alpha is off)."""
        out = {}
        for record in self.layers:
            lora_b = record.layer.lora_B["default"]
            out[record.path] = float(lora_b.parametrizations.weight[0].alpha.detach()) if parametrize.is_parametrized(lora_b) else 1.0
        return out

    def fold_alphas(self) -> None:
        """Bake each α into its B (B ← α·B) and drop the parametrization; the function is unchanged."""
        for record in self.layers:
            lora_b = record.layer.lora_B["default"]
            if parametrize.is_parametrized(lora_b, "weight"):
                # remove_parametrizations deletes the property from the module's generated class, which a deep
                # copy of the model shares: give this module a private copy of that class first.
                cls = type(lora_b)
                lora_b.__class__ = type(cls.__name__, cls.__bases__,
                                        {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")})
                parametrize.remove_parametrizations(lora_b, "weight", leave_parametrized=True)

    def merge(self) -> ContrastiveModel:
        """Fold α, merge every adapter into its base layer and put plain layers back: the model becomes a
        plain model of its backend (saved with :func:`vlalign.models.loading.save_model`). Returns it."""
        self.fold_alphas()
        for record in self.layers:
            record.layer.merge()
            parent_path, _, attr = record.path.rpartition(".")
            parent = self.model.get_submodule(parent_path) if parent_path else self.model
            setattr(parent, attr, record.layer.get_base_layer())
        self.layers = []
        return self.model

    def peft_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(peft LoraConfig kwargs, adapter tensors) of a plain LoRA that turns the *pre-trained* model into this
        one. With clustering init the frozen base differs from W₀ by −ΔW_init, so the exported adapter is
        ΔW − ΔW_init at rank up to 2r: A' = [A; A_init], B' = [s·α·B, −B_init], with lora_alpha = rank
        (scaling 1). Keys are relative to the backend's own model (the transformers model inside an HF wrapper)
        with peft's "base_model.model." prefix, as ``PeftModel.save_pretrained`` writes them."""
        strip = "model." if hasattr(self.model, "model") and isinstance(self.model.model, nn.Module) else ""
        tensors, ranks = {}, {}
        for record in self.layers:
            lora_a = record.layer.lora_A["default"].weight.detach()
            lora_b = record.layer.lora_B["default"].weight.detach() * record.layer.scaling["default"]
            if record.initial_a.numel():
                lora_a = torch.cat([lora_a, record.initial_a.view(-1, *lora_a.shape[1:])])
                lora_b = torch.cat([lora_b, -record.initial_b.view(lora_b.shape[0], -1, *lora_b.shape[2:])], dim=1)
            path = record.path.removeprefix(strip)
            tensors[f"{_PEFT_PREFIX}{path}.lora_A.weight"] = lora_a.contiguous()
            tensors[f"{_PEFT_PREFIX}{path}.lora_B.weight"] = lora_b.contiguous()
            ranks[path] = lora_a.shape[0]
        # Every layer at scaling 1 (lora_alpha = its rank); layers whose rank is not the most common one's are
        # listed in rank_pattern / alpha_pattern, as exact paths (peft matches the keys as regular expressions).
        rank = max(sorted(set(ranks.values())), key=list(ranks.values()).count) if ranks else 0
        others = {re.escape(path): r for path, r in ranks.items() if r != rank}
        config = {"peft_type": "LORA", "task_type": None, "r": rank, "lora_alpha": rank, "lora_dropout": 0.0,
                  "target_modules": list(ranks), "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True,
                  "rank_pattern": others, "alpha_pattern": others}
        return config, tensors

    def save_peft(self, folder: str | Path) -> Path:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (see :meth:`peft_state`)."""
        return write_peft_adapter(folder, *self.peft_state())

    def alpha_mean(self) -> torch.Tensor:
        """The mean adaptive scale over adapted layers, detached (1 without adaptive α)."""
        values = [r.layer.lora_B["default"].parametrizations.weight[0].alpha.detach() for r in self.layers
                  if parametrize.is_parametrized(r.layer.lora_B["default"])]
        return torch.stack(values).mean() if values else torch.ones(())


def write_peft_adapter(folder: str | Path, config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """Write a LoRA in peft's on-disk format: ``adapter_config.json`` and ``adapter_model.safetensors``."""
    from peft import LoraConfig

    folder = Path(folder)
    # LoraConfig.to_dict keeps target_modules as a set, which JSON cannot hold; the list is written instead.
    atomic_write_json(folder / ADAPTER_CONFIG_FILE, LoraConfig(**config).to_dict() | {"target_modules": list(config["target_modules"])})
    save_tensors(folder / ADAPTER_WEIGHTS_FILE, tensors, metadata={"format": "pt"})
    return folder


def _cluster_init(layer: nn.Module, spec: AdapterSpec, seed: int, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Set A, B from k-means on the base weight's rows and subtract their product from the base (see the
    module docstring); returns the initial product's factors (A, s·α₀·B), flattened to 2-D. A Conv2d weight's
    rows are its output filters, flattened to [out, in·k·k]."""
    base = layer.get_base_layer()
    weight = base.weight.detach().flatten(1)
    if getattr(layer, "fan_in_fan_out", False):
        raise ValueError("clustering init expects nn.Linear weights [out, in] (fan_in_fan_out is not supported)")
    rank = layer.r["default"]
    if rank > weight.shape[0]:
        raise ValueError(f"{path}: clustering init needs a rank (rank, or its rank_pattern entry) <= the layer's "
                         f"{weight.shape[0]} output units (rows), got {rank}")
    centres, labels = kmeans(weight, rank, seed=seed, iterations=spec.kmeans_iterations)
    onehot = torch.nn.functional.one_hot(labels, rank).to(weight.dtype)
    scale = layer.scaling["default"] * spec.alpha_init
    centre_norm = float(centres.norm())
    c = math.sqrt(math.sqrt(weight.shape[0]) / (centre_norm * scale)) if centre_norm > 0 else 1.0
    with torch.no_grad():
        lora_a, lora_b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        lora_a.copy_((centres * c).view_as(lora_a))
        lora_b.copy_((onehot / (c * scale)).view_as(lora_b))
        initial_b = lora_b.flatten(1) * scale
        initial_a = lora_a.flatten(1).clone()
        base.weight.sub_((initial_b @ initial_a).view_as(base.weight))
    return initial_a, initial_b.clone()


def apply_advlora(model: ContrastiveModel, spec: AdapterSpec) -> AdvLoRAAdapter:
    """Freeze ``model`` and inject (Adv)LoRA adapters in place into its image tower (and text tower when
    ``spec.text_targets`` is non-empty); returns the handle. Only the adapters (and α) are trainable."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    for param in model.parameters():
        param.requires_grad_(False)
    towers = [("image", model.image_encoder, spec.image_targets if spec.image_targets is not None else default_targets(model, "image"))]
    text_targets = spec.text_targets if spec.text_targets is not None else default_targets(model, "text")
    if text_targets:
        towers.append(("text", model.text_encoder, text_targets))
    # Paths are resolved inside each tower but injected from the model's root: a tower may be a view (an HF
    # wrapper's _Tower), and peft replacing a direct child of a view would leave the real model untouched.
    paths = [_named(model, tower.get_submodule(p)) for _, tower, names in towers for p in resolve_targets(tower, names)]
    # Exact paths as peft's rank_pattern keys (it matches them as regular expressions); lora_alpha follows the rank,
    # so that every layer keeps the scaling lora_alpha / r of the spec.
    ranks = layer_ranks(paths, spec)
    scaling = (spec.lora_alpha if spec.lora_alpha is not None else spec.rank) / spec.rank
    config = LoraConfig(r=spec.rank, lora_alpha=scaling * spec.rank, lora_dropout=0.0, target_modules=paths,
                        rank_pattern={re.escape(p): r for p, r in ranks.items() if r != spec.rank},
                        alpha_pattern={re.escape(p): scaling * r for p, r in ranks.items() if r != spec.rank})
    # peft draws lora_A from the global generator: seed it, so a plain-LoRA run does not depend on what ran before.
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        inject_adapter_in_model(config, model)
    layers: list[_Layer] = []
    for i, path in enumerate(paths):
        layer = model.get_submodule(path)
        if not isinstance(layer, LoraLayer):
            raise RuntimeError(f"peft did not wrap {path}")
        if layer.r["default"] != ranks[path] or not math.isclose(layer.scaling["default"], scaling):
            raise RuntimeError(f"peft gave {path} rank {layer.r['default']} and scaling {layer.scaling['default']}, "
                               f"not {ranks[path]} and {scaling}: this rank_pattern needs peft >= 0.15")
        initial_a, initial_b = _cluster_init(layer, spec, spec.seed * 1_000_003 + i, path) if spec.cluster_init \
            else (torch.empty(0), torch.empty(0))
        if spec.adaptive_alpha:
            parametrize.register_parametrization(layer.lora_B["default"], "weight", ScaleParametrization(spec.alpha_init))
        layers.append(_Layer(path, layer, initial_a, initial_b))
    for record in layers:
        for param in [*record.layer.lora_A.parameters(), *record.layer.lora_B.parameters()]:
            param.requires_grad_(True)
    return AdvLoRAAdapter(model, spec, layers)


def load_peft_adapter(model: ContrastiveModel, folder: str | Path) -> ContrastiveModel:
    """Inject the plain-LoRA adapter written by :meth:`AdvLoRAAdapter.save_peft` into ``model`` (the
    pre-trained model it was trained from), in place; returns ``model``."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    from vlalign.models.checkpoint import load_tensors

    folder = Path(folder)
    config = LoraConfig.from_pretrained(str(folder))
    root = model.model if hasattr(model, "model") and isinstance(model.model, nn.Module) else model
    inject_adapter_in_model(config, root)
    state = {k.removeprefix(_PEFT_PREFIX): v for k, v in load_tensors(folder / ADAPTER_WEIGHTS_FILE).items()}
    result = set_peft_model_state_dict(root, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ValueError(f"{folder / ADAPTER_WEIGHTS_FILE}: keys {unexpected[:3]} do not fit this model")
    return model


def trainable_parameter_count(module: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (parametrized tensors counted once, by their originals)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
