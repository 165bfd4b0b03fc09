"""transformers ``CLIPModel`` behind vlalign's ContrastiveModel interface.

Loads from a hub id (e.g. ``openai/clip-vit-base-patch32``) or a local folder. Resizing (shortest side, then
centre crop) and normalization come from the checkpoint's image-processor config and run in torch, so the
whole pipeline from [0, 1] pixels is differentiable for attacks. Works with transformers 4.x (tensors from
``get_*_features``) and 5.x (ModelOutputs).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlalign.models.base import ContrastiveModel
from vlalign.models.checkpoint import CheckpointError


def _features(output: object) -> torch.Tensor:
    """transformers 5.x returns a ModelOutput from get_*_features; 4.x a tensor."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    for key in ("image_embeds", "text_embeds"):
        value = getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"cannot find embeddings in {type(output).__name__}")


def _size_value(size: object, default: int) -> int:
    """An image processor's ``size``/``crop_size``: an int, a dict (4.x) or a ``SizeDict`` object (5.x)."""
    if isinstance(size, int):
        return size
    for key in ("shortest_edge", "height", "width"):
        value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        if value is not None:
            return int(value)
    return default


def _image_processor_class() -> type:
    """CLIP's image processor class. transformers 5.x warns at every plain CLIPImageProcessor when torchvision is
    absent (as it must be here, see the README); its PIL variant reads and writes the same config silently."""
    try:
        from transformers import CLIPImageProcessorPil as processor_class
    except ImportError:  # transformers 4.x
        from transformers import CLIPImageProcessor as processor_class
    return processor_class


def clip_preprocess(pixels: torch.Tensor, resize_to: int, crop_size: int, mean: torch.Tensor,
                    std: torch.Tensor) -> torch.Tensor:
    """CLIPImageProcessor's pipeline in torch, differentiable: resize the shorter side to ``resize_to`` (bicubic),
    centre-crop ``crop_size``, normalize with ``mean`` / ``std`` ``[1, 3, 1, 1]``."""
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected pixels [B, 3, H, W], got {tuple(pixels.shape)}")
    h, w = pixels.shape[-2:]
    if min(h, w) != resize_to:
        short = min(h, w)
        # The longer side is truncated, as transformers' get_resize_output_image_size does, so the crop
        # window is the one CLIPImageProcessor uses.
        size = (int(resize_to * h / short), int(resize_to * w / short))
        pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    h, w = pixels.shape[-2:]
    top, left = (h - crop_size) // 2, (w - crop_size) // 2
    pixels = pixels[..., top: top + crop_size, left: left + crop_size]
    return (pixels - mean) / std


OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


#: Files that hold a tokenizer's vocabulary. ``tokenizer_config.json`` alone is not one: transformers 5 builds a
#: tokenizer with an empty vocabulary from it (or from nothing at all), so every word would become ``<unk>``.
TOKENIZER_VOCAB_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model",
                         "sentencepiece.bpe.model")


def require_tokenizer_files(folder: str | Path) -> None:
    """Raise a one-line :class:`CheckpointError` when the local model ``folder`` holds no tokenizer vocabulary.

    A folder written by ``model.save_pretrained`` alone has none; transformers would then load a tokenizer with an
    empty vocabulary without a word, and every prompt would get the same embedding.
    """
    folder = Path(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_VOCAB_FILES):
        raise CheckpointError(f"{folder}: no tokenizer files (expected one of {', '.join(TOKENIZER_VOCAB_FILES)}); "
                              "save the tokenizer with the model (tokenizer.save_pretrained(folder))")


def check_tokenizer_size(tokenizer: Any, config: Any, name: str) -> None:
    """Raise :class:`CheckpointError` when ``tokenizer`` has fewer than half the tokens of the model's text
    vocabulary (``config.text_config.vocab_size``): its files are missing or belong to another model."""
    vocab_size = getattr(getattr(config, "text_config", config), "vocab_size", None)
    if isinstance(vocab_size, int) and len(tokenizer) * 2 < vocab_size:
        raise CheckpointError(f"{name}: the tokenizer has {len(tokenizer)} tokens but the model's text vocabulary has "
                              f"{vocab_size}; its tokenizer files are missing or wrong (save the model's own "
                              "tokenizer with it)")


def dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """The ``from_pretrained`` keyword that sets the load dtype: ``dtype`` (transformers >= 4.56), else
    ``torch_dtype``. Without one, transformers 5 keeps the stored dtype (float16 for most hub checkpoints)."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (transformers' messages span several; the CLI reports errors as one)."""
    return " ".join(str(exc).split())


def load_transformers_parts(model_class: type, name_or_path: str | Path, local_files_only: bool | None,
                            label: str, processor_class: type | None = None,
                            dtype: torch.dtype = torch.float32) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, image processor or None)`` of a transformers model by hub id or folder.

    ``local_files_only`` defaults to True for existing folders and when ``HF_HUB_OFFLINE`` is set; a folder without
    ``preprocessor_config.json`` gives no processor (the caller falls back to known statistics). The weights are
    loaded as ``dtype`` (float32 unless asked otherwise: training half-precision weights with AdamW turns them into
    NaN). A folder without tokenizer files, or a tokenizer far smaller than the model's vocabulary, is a
    :class:`CheckpointError`.
    """
    from transformers import AutoTokenizer

    name = str(name_or_path)
    if local_files_only is None:
        local_files_only = Path(name).is_dir() or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    if Path(name).is_dir():
        require_tokenizer_files(name)
    try:
        model = model_class.from_pretrained(name, local_files_only=local_files_only, **dtype_kwargs(dtype))
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
    except OSError as exc:
        raise FileNotFoundError(f"cannot load {label} model {name!r} (local_files_only={local_files_only}): "
                                f"{one_line(exc)}") from None
    except ValueError as exc:
        raise CheckpointError(f"cannot load {label} model {name!r}: {one_line(exc)}") from None
    check_tokenizer_size(tokenizer, model.config, name)
    try:
        processor = (processor_class or _image_processor_class()).from_pretrained(name, local_files_only=local_files_only)
    except OSError:
        processor = None
    return model.eval(), tokenizer, processor


class HFCLIP(ContrastiveModel):
    """A transformers CLIPModel with its tokenizer and image-processor settings."""

    def __init__(self, model: nn.Module, tokenizer: object, image_mean: Sequence[float], image_std: Sequence[float],
                 resize_to: int, crop_size: int) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.register_buffer("mean", torch.tensor(list(image_mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(image_std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.resize_to = resize_to
        self.image_size = crop_size
        self.embed_dim = int(model.config.projection_dim)
        self.max_text_length = int(model.config.text_config.max_position_embeddings)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, local_files_only: bool | None = None,
                        dtype: torch.dtype = torch.float32) -> "HFCLIP":
        """Load model, tokenizer and processor settings from a hub id or folder.

        ``local_files_only`` defaults to True for existing folders and when ``HF_HUB_OFFLINE`` is set. ``dtype``
        (float32 by default, whatever the checkpoint stores) is the weights' type; half precision is for inference
        only, since AdamW steps on float16 weights give NaN.
        """
        from transformers import CLIPModel

        model, tokenizer, processor = load_transformers_parts(CLIPModel, name_or_path, local_files_only, "CLIP",
                                                              dtype=dtype)
        if processor is not None:
            mean, std = processor.image_mean, processor.image_std
            crop = _size_value(getattr(processor, "crop_size", None), model.config.vision_config.image_size)
            resize = _size_value(getattr(processor, "size", None), crop)
        else:  # no preprocessor_config.json: OpenAI CLIP's statistics at the model's native size
            mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
            crop = resize = int(model.config.vision_config.image_size)
        model.eval()
        return cls(model, tokenizer, mean, std, resize, crop)

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """Resize the shorter side to ``resize_to`` (bicubic), centre-crop, normalize: differentiable."""
        return clip_preprocess(pixels, self.resize_to, self.image_size, self.mean, self.std)

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        # Preprocessing runs in the pixels' dtype; a half-precision model gets its input cast to its own dtype.
        inputs = self.preprocess(pixels).to(next(self.model.vision_model.parameters()).dtype)
        features = _features(self.model.get_image_features(pixel_values=inputs))
        return F.normalize(features, dim=-1) if normalize else features

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_text_length, return_tensors="pt")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def encode_tokens(self, tokens: dict[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
        features = _features(self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]))
        return F.normalize(features, dim=-1) if normalize else features

    @property
    def image_encoder(self) -> nn.Module:
        return _Tower(self.model.vision_model, self.model.visual_projection)

    @property
    def text_encoder(self) -> nn.Module:
        return _Tower(self.model.text_model, self.model.text_projection)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.clamp(max=4.6052).exp()

    def save_pretrained(self, path: str | Path) -> None:
        """Write model, tokenizer and processor settings so ``from_pretrained(path)`` restores this model."""
        self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))
        _image_processor_class()(
            size={"shortest_edge": self.resize_to}, crop_size={"height": self.image_size, "width": self.image_size},
            image_mean=self.mean.flatten().tolist(), image_std=self.std.flatten().tolist(),
        ).save_pretrained(str(path))


class _Tower(nn.Module):
    """A view grouping a transformers tower with its projection (no copies of parameters)."""

    def __init__(self, body: nn.Module, projection: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.projection = projection
