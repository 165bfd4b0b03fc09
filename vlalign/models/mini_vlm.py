"""MiniVLM: the MiniCLIP image tower -> a 2-layer MLP projector -> a small transformers Llama decoder.

The decoder reads the tower's per-patch tokens (before pooling; the tower's final norm and head act only on the
pooled token, so they are unused here), each 2 × 2 block of them concatenated into one token, and is fed
``inputs_embeds``: ``num_image_tokens`` projected image tokens,
``<bos>``, the prompt's words, ``<sep>``; the response follows and ends with ``<eos>``. Words come from a fixed
word-level vocabulary (the mini world's question, answer and caption words) stored in ``config.json``.

Any MiniCLIP image tower of the same architecture plugs in (:meth:`MiniVLM.with_vision_tower`), so encoders
trained by TeCoA, FARE or AdPO are interchangeable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vlalign.config import ConfigError, config_from_dict
from vlalign.io import atomic_write_json, read_json, save_tensors
from vlalign.models.checkpoint import CheckpointError, load_state_checked, load_tensors
from vlalign.models.mini_clip import MiniCLIP, MiniCLIPConfig, VisionTower
from vlalign.models.tokenizer import BOS, EOS, PAD, SPECIALS, UNK, split_words
from vlalign.models.vlm import GenerativeVLM, call_causal_lm

IMAGE, SEP = "<image>", "<sep>"
VLM_SPECIALS: tuple[str, ...] = (*SPECIALS, IMAGE, SEP)
ARCHITECTURE = "MiniVLM"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

#: Architecture fields of a MiniCLIP image tower; two towers with equal values have interchangeable weights.
TOWER_FIELDS = ("image_size", "stem_channels", "vision_width", "vision_layers", "vision_heads", "embed_dim")


@dataclass
class MiniVLMConfig:
    """Architecture of a MiniVLM; stored as ``config.json`` beside the weights."""

    #: The image tower (only its vision fields matter; its text fields and vocab are ignored).
    vision: MiniCLIPConfig = field(default_factory=MiniCLIPConfig)
    #: Words the decoder reads and writes (special tokens are added in front).
    vocab: list[str] = field(default_factory=list)
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 512
    #: Merge each ``token_merge`` × ``token_merge`` block of patch tokens into one decoder token by concatenating
    #: their features (InternVL's and Idefics3's pixel shuffle): all the information, ``token_merge``² fewer tokens.
    token_merge: int = 2
    #: Tower block whose output the decoder reads, counted like Python indices (-1: the last; LLaVA reads the
    #: penultimate layer of CLIP). Blocks after it get no gradient.
    feature_layer: int = -1
    #: Longest sequence (image tokens + prompt + response) the decoder accepts.
    max_positions: int = 256

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = config_from_dict(MiniCLIPConfig, self.vision, "vision")
        if not self.vocab:
            raise ValueError("vocab is empty: build the vocabulary from the questions, answers and captions first")
        clash = sorted(set(self.vocab) & set(VLM_SPECIALS))
        if clash or len(set(self.vocab)) != len(self.vocab):
            raise ValueError(f"vocab must hold distinct words and no special tokens, got duplicates or {clash}")
        for name in ("hidden_size", "layers", "heads", "intermediate_size", "token_merge"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not -self.vision.vision_layers <= self.feature_layer < self.vision.vision_layers:
            raise ValueError(f"feature_layer {self.feature_layer} is not a block of the {self.vision.vision_layers}-block tower")
        if self.grid % self.token_merge:
            raise ValueError(f"token_merge {self.token_merge} must divide the tower's {self.grid}x{self.grid} patch grid")
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by heads {self.heads}")
        if self.max_positions < self.num_image_tokens + 4:
            raise ValueError(f"max_positions {self.max_positions} leaves no room after the {self.num_image_tokens} "
                             "image tokens")

    @property
    def grid(self) -> int:
        """Side of the image tower's patch grid."""
        return self.vision.image_size // 2 ** len(self.vision.stem_channels)

    @property
    def num_image_tokens(self) -> int:
        return (self.grid // self.token_merge) ** 2

    @property
    def feature_blocks(self) -> int:
        """Number of tower blocks the decoder's input passes through."""
        return self.feature_layer % self.vision.vision_layers + 1

    def to_dict(self) -> dict:
        data = asdict(self)
        data["vision"]["vocab"] = []
        return {"architecture": ARCHITECTURE, **data}


class ImageProjector(nn.Module):
    """Patch tokens -> decoder embeddings: merge each k × k block of patches into one token (features
    concatenated), LayerNorm (the tower's tokens are an unnormalized residual stream), LLaVA-1.5's two-layer MLP,
    plus a learned embedding per image token: the decoder's own (RoPE) positions are 1-D, this tells it where on
    the 2-D grid each token sits."""

    def __init__(self, vision_width: int, hidden_size: int, grid: int, merge: int) -> None:
        super().__init__()
        self.grid, self.merge = grid, merge
        width = vision_width * merge * merge
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)
        self.pos = nn.Parameter(torch.randn(1, (grid // merge) ** 2, hidden_size) * 0.02)

    def merge_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Row-major patches ``[B, g², C]`` -> one token per k × k block ``[B, (g/k)², k²·C]``."""
        b, n, c = features.shape
        g, k = self.grid, self.merge
        if n != g * g:
            raise ValueError(f"expected {g * g} patch tokens, got {n}")
        return features.reshape(b, g // k, k, g // k, k, c).permute(0, 1, 3, 2, 4, 5).reshape(b, (g // k) ** 2, k * k * c)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(self.merge_tokens(features))))) + self.pos


class MiniVLM(GenerativeVLM):
    """The built-in generative VLM over the mini world (see the module docstring)."""

    def __init__(self, config: MiniVLMConfig) -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        self.config = config
        self.vocab = [*VLM_SPECIALS, *config.vocab]
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.image_token_id, self.eos_token_id = self.index[IMAGE], self.index[EOS]
        self.pad_token_id, self.bos_token_id, self.sep_token_id = self.index[PAD], self.index[BOS], self.index[SEP]
        self.unk_token_id = self.index[UNK]
        self.suppressed_token_ids = tuple(self.index[t] for t in (PAD, UNK, BOS, IMAGE, SEP))
        self.image_size = config.vision.image_size
        self.num_image_tokens = config.num_image_tokens
        self.max_length = config.max_positions
        self.vision = VisionTower(config.vision)
        self.projector = ImageProjector(config.vision.vision_width, config.hidden_size, config.grid, config.token_merge)
        self.projector.apply(MiniCLIP._init_weights)
        self.language_model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(self.vocab), hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
            num_hidden_layers=config.layers, num_attention_heads=config.heads, num_key_value_heads=config.heads,
            max_position_embeddings=config.max_positions, pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id, tie_word_embeddings=False,
            attn_implementation="sdpa"))

    # ------------------------------------------------------------------------------------- vision encoder

    @property
    def vision_encoder(self) -> nn.Module:
        return self.vision

    def unused_vision_parameters(self) -> set[str]:
        later = tuple(f"blocks.{k}." for k in range(self.config.feature_blocks, self.config.vision.vision_layers))
        return {name for name, _ in self.vision.named_parameters() if name.startswith(("norm.", "head.", *later))}

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision.tokens(pixels, self.config.feature_blocks)

    def pooled_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        """The tower's pooled, projected CLIP embedding (unnormalized), as FARE's embedding attack uses it."""
        return self.vision(pixels)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.projector(features)

    def with_vision_tower(self, tower: VisionTower | MiniCLIP) -> "MiniVLM":
        """Load another MiniCLIP image tower (same architecture) into this model's vision encoder: its weights and
        its pixel statistics (the normalization it was trained with)."""
        source = tower.visual if isinstance(tower, MiniCLIP) else tower
        load_state_checked(self.vision, source.state_dict(), f"{type(tower).__name__} image tower")
        if isinstance(tower, MiniCLIP):  # its config holds the statistics exactly
            self.set_pixel_statistics(tower.config.pixel_mean, tower.config.pixel_std)
        else:  # a bare tower: its float32 buffers (the same float32 values once copied)
            self.set_pixel_statistics(source.mean.flatten().tolist(), source.std.flatten().tolist())
        return self

    def set_pixel_statistics(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Normalize pixels with ``mean`` / ``std`` (per channel) from now on, in the tower and in the config that
        is saved with the model."""
        self.config.vision = replace(self.config.vision, pixel_mean=tuple(mean), pixel_std=tuple(std))
        self.vision.mean.copy_(torch.tensor(self.config.vision.pixel_mean).view(1, 3, 1, 1))
        self.vision.std.copy_(torch.tensor(self.config.vision.pixel_std).view(1, 3, 1, 1))

    # ------------------------------------------------------------------------------------------ tokens

    def _word_ids(self, text: str, strict: bool, what: str) -> list[int]:
        words = split_words(text)
        if strict:
            unknown = [w for w in words if w not in self.index]
            if unknown:
                raise ValueError(f"{what} {text!r} has words outside the model's vocabulary: {unknown}")
        return [self.index.get(w, self.unk_token_id) for w in words]

    def prompt_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        head = [self.image_token_id] * self.num_image_tokens + [self.bos_token_id]
        return [head + self._word_ids(p, False, "prompt") + [self.sep_token_id] for p in prompts]

    def response_ids(self, responses: Sequence[str]) -> list[list[int]]:
        return [self._word_ids(r, True, "response") + [self.eos_token_id] for r in responses]

    def decode_ids(self, ids: Sequence[int]) -> str:
        specials = len(VLM_SPECIALS)
        return " ".join(self.vocab[i] for i in ids if i >= specials)

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.get_input_embeddings()(ids)

    def decoder_logits(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                       cache: object | None = None, use_cache: bool = False,
                       logits_to_keep: int = 0) -> tuple[torch.Tensor, object | None]:
        if int(position_ids.max()) >= self.max_length:
            raise ValueError(f"sequence of {int(position_ids.max()) + 1} tokens exceeds the decoder's max_positions "
                             f"{self.max_length}")
        return call_causal_lm(self.language_model, inputs_embeds, attention_mask, position_ids, cache, use_cache,
                              logits_to_keep)

    # ------------------------------------------------------------------------------------------ save / load

    def save(self, folder: str | Path) -> None:
        """Write ``model.safetensors`` and ``config.json`` into ``folder``, each atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors(folder / WEIGHTS_FILE, self.state_dict(), metadata={"architecture": ARCHITECTURE})
        atomic_write_json(folder / CONFIG_FILE, self.config.to_dict())


def same_tower_architecture(a: MiniCLIPConfig, b: MiniCLIPConfig) -> list[str]:
    """Architecture fields in which two MiniCLIP image towers differ (empty: their weights are interchangeable)."""
    return [f"{name}: {getattr(a, name)} vs {getattr(b, name)}" for name in TOWER_FIELDS
            if getattr(a, name) != getattr(b, name)]


def read_mini_vlm_config(folder: str | Path) -> MiniVLMConfig:
    """The :class:`MiniVLMConfig` in ``folder/config.json``; errors name the file."""
    path = Path(folder) / CONFIG_FILE
    data = read_json(path, CheckpointError, f"a MiniVLM folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    if not isinstance(data, dict) or data.pop("architecture", None) != ARCHITECTURE:
        raise CheckpointError(f"{path}: not a MiniVLM config (no \"architecture\": \"{ARCHITECTURE}\")")
    try:
        return config_from_dict(MiniVLMConfig, data, str(path))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None


def load_mini_vlm(folder: str | Path) -> MiniVLM:
    """Load a MiniVLM written by :meth:`MiniVLM.save`, in eval mode."""
    model = MiniVLM(read_mini_vlm_config(folder))
    load_state_checked(model, load_tensors(Path(folder) / WEIGHTS_FILE), Path(folder) / WEIGHTS_FILE)
    return model.eval()


def mini_vlm_from_clip(clip: MiniCLIP, vocab: Sequence[str], **sizes: int) -> MiniVLM:
    """A MiniVLM whose vision encoder is a copy of ``clip``'s image tower; projector and decoder are freshly
    initialized (seed torch first for reproducible weights). ``sizes``: hidden_size, layers, heads, ..."""
    vision = MiniCLIPConfig(**{**asdict(clip.config), "vocab": []})
    model = MiniVLM(MiniVLMConfig(vision=vision, vocab=list(vocab), **sizes))
    return model.with_vision_tower(clip)
