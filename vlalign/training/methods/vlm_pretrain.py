"""Pretraining a generative VLM on question answering and captions, LLaVA's recipe (Liu et al., "Visual
Instruction Tuning", NeurIPS 2023; "Improved Baselines with Visual Instruction Tuning", CVPR 2024).

The vision tower is frozen throughout. Stage ``projector`` trains only the projector (feature alignment); stage
``full`` trains projector and decoder (instruction tuning). The loss is next-token cross-entropy on the response
tokens (:func:`vlalign.losses.language.language_modeling_loss`); image and prompt positions are never scored.

Because the tower is frozen, its patch features of every training image are computed once in ``prepare`` in fixed
batches and looked up by ``"index"``: a step then runs only the projector and the decoder.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vlalign.losses.language import language_modeling_loss
from vlalign.models.vlm import GenerativeVLM
from vlalign.training.method import Method, Stream

STAGES = ("projector", "full")
#: Item key holding the response of each stream's items.
RESPONSE_KEYS = ("answer", "caption")


def _response_key(dataset: Dataset, name: str) -> str:
    item = dataset[0]
    found = [k for k in RESPONSE_KEYS if k in item]
    if len(found) != 1 or "prompt" not in item or "index" not in item:
        raise ValueError(f"stream {name!r}: items need \"index\", \"prompt\" and one of {list(RESPONSE_KEYS)}, got "
                         f"keys {sorted(item)}")
    return found[0]


class IndexDataset(Dataset):
    """Items ``{"index": i}`` for i < n: the stream of a method that looks everything else up by index."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} items")
        return {"index": index}


class VLMPretrainMethod(Method):
    """Next-token cross-entropy on the responses of every stream, vision tower frozen (see module docstring).

    ``datasets`` maps stream names (e.g. ``"qa"``, ``"caption"``) to map-style datasets whose items hold
    ``"index"``, ``"pixels"`` (uint8 ``[3, H, W]``), ``"prompt"`` and ``"answer"`` or ``"caption"``. The loss is
    the mean of the streams' token-averaged losses, so each stream weighs the same whatever its answer lengths.

    With ``cache_features`` (the default), ``prepare`` reads every item once and keeps the tower's features (in
    ``cache_dtype``) and the texts; the streams then hold only indices, so a step renders and encodes no image.
    ``batch_sizes`` overrides the loop's batch size per stream (e.g. fewer, longer captions); ``cache_workers``
    processes read the items for the cache (rendering is the cost of a procedurally generated set).
    """

    #: Show a progress bar while caching.
    progress: bool = True

    default_train: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 1e-3, "betas": (0.9, 0.98),
                                               "weight_decay": 0.0}

    def __init__(self, model: GenerativeVLM, datasets: dict[str, Dataset], stage: str = "full",
                 cache_features: bool = True, cache_batch_size: int = 256,
                 cache_dtype: torch.dtype = torch.float16, batch_sizes: dict[str, int] | None = None,
                 cache_workers: int = 0) -> None:
        super().__init__()
        if not datasets or any(len(d) == 0 for d in datasets.values()):
            raise ValueError("VLM pretraining needs at least one non-empty dataset")
        if cache_batch_size < 1:
            raise ValueError(f"cache_batch_size must be >= 1, got {cache_batch_size}")
        self.model = model
        self.datasets = dict(datasets)
        self.response_keys = {name: _response_key(d, name) for name, d in self.datasets.items()}
        self.cache_features = cache_features
        self.cache_batch_size = cache_batch_size
        self.cache_dtype = cache_dtype
        self.cache_workers = cache_workers
        self.batch_sizes = dict(batch_sizes or {})
        unknown = sorted(set(self.batch_sizes) - set(self.datasets))
        if unknown:
            raise ValueError(f"batch_sizes names unknown streams {unknown}; streams are {sorted(self.datasets)}")
        self.features: dict[str, torch.Tensor] = {}
        self.texts: dict[str, tuple[list[str], list[str]]] = {}
        self.set_stage(stage)

    def set_stage(self, stage: str) -> None:
        """``"projector"``: train the projector only; ``"full"``: projector and decoder. The tower stays frozen."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}")
        self.stage = stage
        for param in self.model.parameters():
            param.requires_grad_(False)
        trained: list[nn.Module] = [self.model.projector]
        if stage == "full":
            trained.append(self.model.language_model)
        for module in trained:
            for param in module.parameters():
                param.requires_grad_(True)

    def streams(self) -> dict[str, Stream]:
        return {name: Stream(IndexDataset(len(dataset)) if self.cache_features else dataset, self.batch_sizes.get(name))
                for name, dataset in self.datasets.items()}

    @torch.no_grad()
    def prepare(self, device: torch.device) -> None:
        """Move to ``device``; with ``cache_features``, read every item once: tower features and texts."""
        self.to(device)
        self.model.vision_encoder.eval()
        if not self.cache_features:
            return
        for name, dataset in self.datasets.items():
            if name in self.features:
                self.features[name] = self.features[name].to(device)
                continue
            chunks, prompts, responses = [], [], []
            # "spawn": forked workers of a process whose torch thread pool is running can deadlock.
            loader = DataLoader(dataset, batch_size=self.cache_batch_size, shuffle=False, num_workers=self.cache_workers,
                                multiprocessing_context="spawn" if self.cache_workers else None)
            for batch in tqdm(loader, desc=f"features of {name!r}", disable=not self.progress):
                pixels = batch["pixels"].to(device).float().div_(255.0)
                chunks.append(self.model.image_features(pixels).to(self.cache_dtype))
                prompts += list(batch["prompt"])
                responses += list(batch[self.response_keys[name]])
            self.features[name] = torch.cat(chunks)
            self.texts[name] = (prompts, responses)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        for name in self.datasets:
            if name not in batch:
                raise KeyError(f"batch has no stream {name!r}; got {sorted(batch)}")
            part = batch[name]
            if self.cache_features:
                if name not in self.features:
                    raise RuntimeError("prepare() must run before the first step: the feature cache is empty")
                index = part["index"].tolist()
                features = self.features[name][part["index"].to(self.features[name].device)].float()
                prompts, responses = self.texts[name]
                prompts, responses = [prompts[i] for i in index], [responses[i] for i in index]
            else:
                with torch.no_grad():
                    features = self.model.image_features(part["pixels"].to(self.model.device).float().div_(255.0))
                prompts, responses = part["prompt"], part[self.response_keys[name]]
            scores = self.model.response_logprobs(None, prompts, responses, image_features=features)
            terms[f"{name}_nll"] = language_modeling_loss(scores.per_token, scores.mask)
        return {"loss": torch.stack(list(terms.values())).mean(), **terms}

    def trainable_module(self) -> nn.Module:
        return self.model

    def finish(self) -> nn.Module:
        for param in self.model.parameters():
            param.requires_grad_(False)
        return self.model.eval()
