"""MiniCLIP: a small CLIP (conv-stem ViT image tower, word-level text transformer) for the mini world.

Small enough to pretrain on two CPU cores in minutes, structured like CLIP: separate towers, a projection into
a shared space, a learnable temperature. Attention and MLP layers are ``nn.Linear`` modules with stable names
(``qkv``, ``proj``, ``fc1``, ``fc2``) so LoRA adapters can target them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vlalign.models.base import ContrastiveModel
from vlalign.models.tokenizer import SPECIALS, WordTokenizer


@dataclass
class MiniCLIPConfig:
    """Architecture of a MiniCLIP; stored as ``config.json`` beside the weights."""

    image_size: int = 64
    stem_channels: tuple[int, ...] = (32, 64, 128)
    vision_width: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    embed_dim: int = 128
    max_text_length: int = 16
    vocab: list[str] = field(default_factory=list)
    pixel_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    pixel_std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    init_temperature: float = 0.07

    def __post_init__(self) -> None:
        self.stem_channels = tuple(self.stem_channels)
        self.pixel_mean = tuple(self.pixel_mean)
        self.pixel_std = tuple(self.pixel_std)
        if self.image_size % (2 ** len(self.stem_channels)):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2**{len(self.stem_channels)} (the stem's stride)")
        for width, heads, name in ((self.vision_width, self.vision_heads, "vision"), (self.text_width, self.text_heads, "text")):
            if width % heads:
                raise ValueError(f"{name}_width {width} must be divisible by {name}_heads {heads}")
        if self.stem_channels[-1] != self.vision_width:
            raise ValueError(f"the last stem channel count {self.stem_channels[-1]} must equal vision_width {self.vision_width}")
        if not 0 < self.init_temperature < 1:
            raise ValueError(f"init_temperature must be in (0, 1), got {self.init_temperature}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["architecture"] = "MiniCLIP"
        return data


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, w))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class VisionTower(nn.Module):
    """Conv stem (stride 2 per stage) -> tokens -> transformer -> mean pool -> projection."""

    def __init__(self, cfg: MiniCLIPConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for out in cfg.stem_channels:
            # GroupNorm rather than BatchNorm: no train/eval difference, so attacks and training see one model.
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.GroupNorm(8, out), nn.GELU(),
                       nn.Conv2d(out, out, 3, padding=1), nn.GroupNorm(8, out), nn.GELU()]
            channels = out
        self.stem = nn.Sequential(*layers)
        grid = cfg.image_size // 2 ** len(cfg.stem_channels)
        self.pos = nn.Parameter(torch.randn(1, grid * grid, cfg.vision_width) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.vision_width, cfg.vision_heads) for _ in range(cfg.vision_layers))
        self.norm = nn.LayerNorm(cfg.vision_width)
        self.head = nn.Linear(cfg.vision_width, cfg.embed_dim, bias=False)
        self.register_buffer("mean", torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.pixel_std).view(1, 3, 1, 1), persistent=False)
        self.image_size = cfg.image_size

    def tokens(self, pixels: torch.Tensor, blocks: int | None = None) -> torch.Tensor:
        """Per-patch tokens after the first ``blocks`` transformer blocks (all by default), before pooling ->
        ``[B, grid², vision_width]``: what a generative VLM reads (``norm`` and ``head`` act only on the pooled token)."""
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True)
        x = self.stem((pixels - self.mean) / self.std)
        x = x.flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks[:blocks]:
            x = block(x)
        return x

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.tokens(pixels).mean(1)))


class TextTower(nn.Module):
    """Token + position embeddings -> transformer (padding masked) -> state at <eos> -> projection."""

    def __init__(self, cfg: MiniCLIPConfig, vocab_size: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, cfg.text_width)
        self.pos = nn.Parameter(torch.randn(1, cfg.max_text_length, cfg.text_width) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.text_width, cfg.text_heads) for _ in range(cfg.text_layers))
        self.norm = nn.LayerNorm(cfg.text_width)
        self.head = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        x = self.token_embedding(input_ids) if inputs_embeds is None else inputs_embeds
        x = x + self.pos[:, : x.shape[1]]
        keep = attention_mask.bool()
        mask = keep[:, None, None, :]
        for block in self.blocks:
            x = block(x, mask)
        eos_index = keep.sum(1) - 1
        pooled = self.norm(x[torch.arange(x.shape[0], device=x.device), eos_index])
        return self.head(pooled)


class MiniCLIP(ContrastiveModel):
    """The built-in small CLIP. Build with a config that carries the tokenizer vocabulary."""

    def __init__(self, config: MiniCLIPConfig) -> None:
        super().__init__()
        if not config.vocab:
            raise ValueError("MiniCLIPConfig.vocab is empty: build the vocabulary from your captions first")
        self.config = config
        self.tokenizer = WordTokenizer(config.vocab, config.max_text_length)
        self.visual = VisionTower(config)
        self.text = TextTower(config, len(self.tokenizer))
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))
        self.image_size = config.image_size
        self.embed_dim = config.embed_dim
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.visual(pixels)
        return F.normalize(features, dim=-1) if normalize else features

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts)

    def unknown_words(self, texts: Sequence[str]) -> list[str]:
        return self.tokenizer.unknown_words(texts)

    def vocabulary_size(self) -> int | None:
        return len(self.tokenizer) - len(SPECIALS)

    def encode_tokens(self, tokens: dict[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
        features = self.text(tokens["input_ids"], tokens["attention_mask"], tokens.get("inputs_embeds"))
        return F.normalize(features, dim=-1) if normalize else features

    @property
    def image_encoder(self) -> nn.Module:
        return self.visual

    @property
    def text_encoder(self) -> nn.Module:
        return self.text

    @property
    def logit_scale(self) -> torch.Tensor:
        # Clamped at 100 as in CLIP, so the temperature cannot collapse.
        return self.log_logit_scale.clamp(max=math.log(100.0)).exp()
