"""transformers ``LlavaForConditionalGeneration`` behind vlalign's :class:`GenerativeVLM` interface.

Loads model and processor from a hub id (e.g. ``llava-hf/llava-1.5-7b-hf``) or a local folder. Images go through
CLIP's resize / centre-crop / normalization in torch (settings from the processor's image processor), so the whole
pipeline from [0, 1] pixels is differentiable for attacks. Prompts follow LLaVA-1.5's template
``"USER: <image>\\n{prompt} ASSISTANT:"``; the one ``<image>`` token is expanded to one placeholder per image
feature, as LlavaProcessor does.

LLaVA reads the vision tower's hidden states at ``vision_feature_layer`` (the penultimate layer by default), with
the CLS token dropped (``vision_feature_select_strategy="default"``). The layers after that one and the pooled
output's ``post_layernorm`` get no gradient: :meth:`HFLlava.unused_vision_parameters` names them, and they are
left out of the trainable vision parameters and their count. Works with transformers 4.x and 5.x.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from vlalign.io import atomic_write_bytes
from vlalign.models.checkpoint import CheckpointError
from vlalign.models.hf_clip import (
    _image_processor_class, _size_value, check_tokenizer_size, clip_preprocess, dtype_kwargs, one_line,
    require_tokenizer_files,
)
from vlalign.models.vlm import GenerativeVLM, call_causal_lm

DEFAULT_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"
_LAYER = re.compile(r"(?:^|\.)encoder\.layers\.(\d+)\.")


def _part(model: nn.Module, name: str) -> nn.Module:
    """A submodule of LlavaForConditionalGeneration in transformers 5.x (under ``.model``) or 4.x (top level)."""
    inner = getattr(model, "model", None)
    return getattr(inner, name) if inner is not None and hasattr(inner, name) else getattr(model, name)


def _config_value(config: object, *names: str) -> object:
    for name in names:
        if getattr(config, name, None) is not None:
            return getattr(config, name)
    raise ValueError(f"the LLaVA config has none of {names}")


class HFLlava(GenerativeVLM):
    """A transformers LLaVA model with its tokenizer and image-processor settings."""

    def __init__(self, model: nn.Module, tokenizer: object, image_mean: Sequence[float], image_std: Sequence[float],
                 resize_to: int, crop_size: int, prompt_template: str = DEFAULT_TEMPLATE,
                 processor: object | None = None) -> None:
        super().__init__()
        if prompt_template.count("<image>") != 1 or "{prompt}" not in prompt_template:
            raise ValueError(f"prompt_template needs one '<image>' and one '{{prompt}}', got {prompt_template!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor
        self.prompt_template = prompt_template
        self.register_buffer("mean", torch.tensor(list(image_mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(image_std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.resize_to, self.image_size = resize_to, crop_size
        config = model.config
        vision = config.vision_config
        self.feature_layer = config.vision_feature_layer
        self.select_strategy = config.vision_feature_select_strategy
        if self.select_strategy not in ("default", "full"):
            raise ValueError(f"unknown vision_feature_select_strategy {self.select_strategy!r}")
        grid = vision.image_size // vision.patch_size
        self.num_image_tokens = grid * grid + (1 if self.select_strategy == "full" else 0)
        self.image_token_id = int(_config_value(config, "image_token_id", "image_token_index"))
        self.eos_token_id = int(tokenizer.eos_token_id)
        self.pad_token_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        self.max_length = int(getattr(config.text_config, "max_position_embeddings", 1 << 30))
        self.suppressed_token_ids = tuple(sorted({self.image_token_id} | ({self.pad_token_id} - {self.eos_token_id})))
        if tokenizer.convert_tokens_to_ids("<image>") != self.image_token_id:
            raise ValueError(f"the tokenizer's '<image>' token has id {tokenizer.convert_tokens_to_ids('<image>')}, but the "
                             f"model's image_token_id is {self.image_token_id}")

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, local_files_only: bool | None = None,
                        prompt_template: str = DEFAULT_TEMPLATE, dtype: torch.dtype = torch.float32) -> "HFLlava":
        """Load model and processor from a hub id or folder (``local_files_only`` defaults to True for folders and
        when ``HF_HUB_OFFLINE`` is set).

        ``dtype`` is the projector's and language model's type: float32 by default, whatever the checkpoint
        stores (llava-hf's are float16). The vision tower, the part AdPO trains, is float32 in any case: AdamW
        steps on float16 weights underflow (its eps is 0 in float16) and turn them into NaN. A folder without
        tokenizer files is a :class:`CheckpointError` naming it.
        """
        from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

        name = str(name_or_path)
        if local_files_only is None:
            local_files_only = Path(name).is_dir() or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
        if Path(name).is_dir():
            require_tokenizer_files(name)
        kwargs = {"local_files_only": local_files_only}
        where = f"LLaVA model {name!r} (local_files_only={local_files_only})"
        try:
            model = LlavaForConditionalGeneration.from_pretrained(name, **kwargs, **dtype_kwargs(dtype))
        except OSError as exc:
            raise FileNotFoundError(f"cannot load {where}: {one_line(exc)}") from None
        except ValueError as exc:
            raise CheckpointError(f"cannot load {where}: {one_line(exc)}") from None
        _part(model, "vision_tower").float()
        try:
            processor = AutoProcessor.from_pretrained(name, **kwargs)
            tokenizer, image_processor = processor.tokenizer, processor.image_processor
        except (OSError, ValueError):
            processor = None
            try:
                tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
                image_processor = _image_processor_class().from_pretrained(name, **kwargs)
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"cannot load the tokenizer or image processor of {where}: "
                                      f"{one_line(exc)}") from None
        check_tokenizer_size(tokenizer, model.config, name)
        crop = _size_value(getattr(image_processor, "crop_size", None), model.config.vision_config.image_size)
        resize = _size_value(getattr(image_processor, "size", None), crop)
        model.eval()
        return cls(model, tokenizer, image_processor.image_mean, image_processor.image_std, resize, crop,
                   prompt_template, processor)

    # ------------------------------------------------------------------------------------- vision encoder

    @property
    def vision_encoder(self) -> nn.Module:
        return _part(self.model, "vision_tower")

    @property
    def projector(self) -> nn.Module:
        return _part(self.model, "multi_modal_projector")

    @property
    def language_model(self) -> nn.Module:
        """The decoder with its output head (what LLaVA's stage 2 trains besides the projector)."""
        body = _part(self.model, "language_model")
        head = getattr(self.model, "lm_head", None)
        return nn.ModuleList([body, head]) if head is not None and head not in list(body.modules()) else body

    def _feature_layers(self) -> list[int]:
        layers = self.feature_layer if isinstance(self.feature_layer, (list, tuple)) else [self.feature_layer]
        count = self.model.config.vision_config.num_hidden_layers
        return [layer if layer >= 0 else count + 1 + layer for layer in layers]

    def unused_vision_parameters(self) -> set[str]:
        # hidden_states[k] is the output of encoder layer k-1 (hidden_states[0]: the embeddings after pre_layrnorm),
        # so reading hidden_states[k] uses layers 0..k-1 only.
        deepest = max(self._feature_layers())
        unused = set()
        for name, _ in self.vision_encoder.named_parameters():
            match = _LAYER.search(name)
            if (match and int(match.group(1)) >= deepest) or re.search(r"(^|\.)(post_layernorm|head)\.", name):
                unused.add(name)
        return unused

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        return clip_preprocess(pixels, self.resize_to, self.image_size, self.mean, self.std)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        tower = self.vision_encoder
        dtype = next(tower.parameters()).dtype
        out = tower(self.preprocess(pixels).to(dtype), output_hidden_states=True)
        selected = [out.hidden_states[k] for k in self._feature_layers()]
        if self.select_strategy == "default":
            selected = [h[:, 1:] for h in selected]
        return torch.cat(selected, dim=-1)

    def pooled_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        """The vision tower's pooled output (post-layernorm CLS token of the last layer)."""
        tower = self.vision_encoder
        return tower(self.preprocess(pixels).to(next(tower.parameters()).dtype)).pooler_output

    def project(self, features: torch.Tensor) -> torch.Tensor:
        # The vision tower is float32 even when the projector and decoder are loaded in half precision.
        return self.projector(features.to(next(self.projector.parameters()).dtype))

    # ------------------------------------------------------------------------------------------ tokens

    def prompt_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        out = []
        for prompt in prompts:
            ids = list(self.tokenizer(self.prompt_template.format(prompt=prompt)).input_ids)
            if ids.count(self.image_token_id) != 1:
                raise ValueError(f"prompt {prompt!r} tokenizes to {ids.count(self.image_token_id)} image tokens; the "
                                 "template's '<image>' must be the only one")
            at = ids.index(self.image_token_id)
            out.append(ids[:at] + [self.image_token_id] * self.num_image_tokens + ids[at + 1:])
        return out

    def response_ids(self, responses: Sequence[str]) -> list[list[int]]:
        return [list(self.tokenizer(r, add_special_tokens=False).input_ids) + [self.eos_token_id] for r in responses]

    def decode_ids(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def decoder_logits(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                       cache: object | None = None, use_cache: bool = False,
                       logits_to_keep: int = 0) -> tuple[torch.Tensor, object | None]:
        if int(position_ids.max()) >= self.max_length:
            raise ValueError(f"sequence of {int(position_ids.max()) + 1} tokens exceeds max_position_embeddings {self.max_length}")
        return call_causal_lm(self.model, inputs_embeds, attention_mask, position_ids, cache, use_cache, logits_to_keep)

    # ------------------------------------------------------------------------------------------ save

    def save(self, folder: str | Path) -> None:
        """Write model, tokenizer and processor settings so :meth:`from_pretrained` restores this model. Each file
        is written to a temporary folder first and then moved into ``folder`` atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        try:
            self.model.save_pretrained(str(staging))
            if self.processor is not None:
                self.processor.save_pretrained(str(staging))
            else:
                self.tokenizer.save_pretrained(str(staging))
                _image_processor_class()(
                    size={"shortest_edge": self.resize_to}, crop_size={"height": self.image_size, "width": self.image_size},
                    image_mean=self.mean.flatten().tolist(), image_std=self.std.flatten().tolist(),
                ).save_pretrained(str(staging))
            for path in sorted(staging.rglob("*")):
                if path.is_file():
                    atomic_write_bytes(folder / path.relative_to(staging), path.read_bytes())
        finally:
            shutil.rmtree(staging, ignore_errors=True)
