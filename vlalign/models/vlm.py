"""The interface every generative vision-language model in vlalign implements (image + prompt -> text).

Images enter as float pixels in [0, 1], ``[B, 3, H, W]``; resizing and normalization live inside the model, as
in :class:`~vlalign.models.base.ContrastiveModel`, so attacks work in plain pixel space. A model is a vision
encoder whose per-patch features a projector maps into the input embeddings of a decoder-only language model, at
the positions of image placeholder tokens in the prompt (LLaVA's design).

Two operations, shaped as trl and open_clip's CoCa shape them:

- :meth:`GenerativeVLM.response_logprobs` — log p(response | image, prompt), summed and per token. The scored
  tokens are the response's tokens and its end-of-sequence token; image and prompt positions are never scored.
  Chosen and rejected responses go in one batch (repeat the image), so the preference losses of
  :mod:`vlalign.losses.preference` apply unchanged to the sequence log-probabilities.
- :meth:`GenerativeVLM.generate` — greedy or seeded sampled decoding with a key-value cache.

Subclasses provide tokenization and the pieces (image features, projector, token embeddings, one decoder
call); batching, padding and decoding live here once. Sequences are right-padded and every real token keeps the
position it would have alone, so no attention row is ever fully masked and a batch scores each row as it would
score it alone, up to float noise.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ResponseScores:
    """Log-probabilities of responses given image and prompt, for a batch of B.

    ``per_token`` ``[B, T]``: log p of each response token given everything before it, 0 where ``mask`` is
    False (padding); ``total`` ``[B]``: their sum, log p(response | image, prompt). ``greedy_match`` ``[B]``:
    every response token is the decoder's top-1 choice (among the tokens decoding may emit) under teacher forcing,
    i.e. greedy decoding would produce exactly this response (exact ties aside).
    """

    total: torch.Tensor
    per_token: torch.Tensor
    mask: torch.Tensor
    greedy_match: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """Scored tokens per response (its tokens plus end-of-sequence) -> ``[B]``."""
        return self.mask.sum(1)

    @property
    def mean(self) -> torch.Tensor:
        """Average log-probability per token (the length-normalized reward of SimPO) -> ``[B]``."""
        return self.total / self.lengths.clamp_min(1)


def _accepts(module: nn.Module, name: str) -> bool:
    return name in inspect.signature(module.forward).parameters


def call_causal_lm(lm: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                   position_ids: torch.Tensor, cache: object | None = None, use_cache: bool = False,
                   logits_to_keep: int = 0) -> tuple[torch.Tensor, object | None]:
    """One forward pass of a transformers causal LM on ``inputs_embeds`` -> (logits of the last
    ``logits_to_keep`` positions, or all for 0; the key-value cache). Works with transformers 4.x
    (``past_key_values``) and 5.x (``cache``)."""
    kwargs: dict = {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask, "position_ids": position_ids,
                    "use_cache": use_cache}
    if cache is not None:
        kwargs["cache" if _accepts(lm, "cache") else "past_key_values"] = cache
    sliced = logits_to_keep and _accepts(lm, "logits_to_keep")
    if sliced:
        kwargs["logits_to_keep"] = logits_to_keep
    out = lm(**kwargs)
    logits = out.logits if sliced or not logits_to_keep else out.logits[:, -logits_to_keep:]
    if not use_cache:
        return logits, None
    new_cache = out.get("cache", None)
    return logits, new_cache if new_cache is not None else out.get("past_key_values", None)


class GenerativeVLM(nn.Module, ABC):
    """A vision encoder -> projector -> decoder-only language model; see the module docstring."""

    #: Side length the vision encoder sees after the model's own resizing.
    image_size: int
    #: Placeholder tokens one image occupies in a prompt (the number of projected image tokens the decoder reads).
    num_image_tokens: int
    image_token_id: int
    eos_token_id: int
    pad_token_id: int
    #: Token ids decoding never emits (padding, image placeholders, other control tokens).
    suppressed_token_ids: tuple[int, ...] = ()

    # ------------------------------------------------------------------------------ what subclasses provide

    @property
    @abstractmethod
    def vision_encoder(self) -> nn.Module:
        """The vision tower (the module whose parameters AdPO trains and ``vlalign transfer`` replaces)."""

    @abstractmethod
    def unused_vision_parameters(self) -> set[str]:
        """Names, within :attr:`vision_encoder`, of parameters the decoder's input does not depend on (layers after
        the feature layer, a pooled-output norm or head): they get no gradient and are never trained."""

    @abstractmethod
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The vision features the projector reads, ``[B, num_image_tokens, D_vision]``."""

    @abstractmethod
    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Map vision features into the decoder's embedding space -> ``[B, N, D_text]``."""

    @abstractmethod
    def prompt_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of each prompt's full prefix, holding ``num_image_tokens`` copies of ``image_token_id``."""

    @abstractmethod
    def response_ids(self, responses: Sequence[str]) -> list[list[int]]:
        """Token ids of each response, ending with ``eos_token_id``."""

    @abstractmethod
    def decode_ids(self, ids: Sequence[int]) -> str:
        """Text of generated token ids (the end-of-sequence token already removed)."""

    @abstractmethod
    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """The decoder's input embeddings of token ids ``[B, L]`` -> ``[B, L, D_text]``."""

    @abstractmethod
    def decoder_logits(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                       cache: object | None = None, use_cache: bool = False,
                       logits_to_keep: int = 0) -> tuple[torch.Tensor, object | None]:
        """One decoder pass (see :func:`call_causal_lm`)."""

    @abstractmethod
    def save(self, folder: str | Path) -> None:
        """Write the model so that :func:`vlalign.models.vlm_loading.load_vlm` loads it back."""

    # ------------------------------------------------------------------------------------- vision encoder

    def vision_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the vision encoder that the decoder's input depends on (the trainable set)."""
        unused = self.unused_vision_parameters()
        return (p for name, p in self.vision_encoder.named_parameters() if name not in unused)

    def vision_parameter_count(self) -> int:
        """Number of trainable vision-encoder parameters (unused ones excluded)."""
        return sum(p.numel() for p in self.vision_parameters())

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """The image features the decoder reads, flattened -> ``[B, N · D_vision]``: the embedding of the
        embedding-space attack (FARE's and AdPO's inner maximization on what the language model sees)."""
        features = self.image_features(pixels).flatten(1).float()
        return F.normalize(features, dim=-1) if normalize else features

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------------------------------ sequences

    def _suppress(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits with the suppressed tokens at −∞: what decoding chooses from."""
        return _suppressed(logits, self.suppressed_token_ids)

    def _features(self, pixels: torch.Tensor | None, image_features: torch.Tensor | None, n: int) -> torch.Tensor:
        if image_features is None:
            if pixels is None:
                raise ValueError("pass pixels or image_features")
            if pixels.dim() != 4 or pixels.shape[1] != 3 or not pixels.is_floating_point():
                raise ValueError(f"pixels must be float [B, 3, H, W] in [0, 1], got {pixels.dtype} {tuple(pixels.shape)}")
            image_features = self.image_features(pixels.to(self.device))
        if image_features.dim() != 3 or image_features.shape[0] != n:
            raise ValueError(f"expected image features [{n}, N, D] for {n} prompts, got {tuple(image_features.shape)}")
        return image_features

    def _sequences(self, features: torch.Tensor, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded input embeddings ``[B, L, D]`` with the projected image features at the placeholders,
        and the attention mask ``[B, L]``."""
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        slots = (ids == self.image_token_id) & mask.bool()
        counts = slots.sum(1)
        if not bool((counts == self.num_image_tokens).all()):
            bad = int((counts != self.num_image_tokens).nonzero()[0])
            raise ValueError(f"row {bad} holds {int(counts[bad])} image placeholder tokens, expected "
                             f"{self.num_image_tokens}; a prompt or response must not contain the image token")
        ids, mask, slots = ids.to(self.device), mask.to(self.device), slots.to(self.device)
        embeds = self.embed_ids(ids)
        projected = self.project(features).to(embeds.dtype)
        if projected.shape[:2] != (len(rows), self.num_image_tokens):
            raise ValueError(f"the projector made {tuple(projected.shape[:2])} image tokens, expected "
                             f"({len(rows)}, {self.num_image_tokens})")
        return embeds.masked_scatter(slots.unsqueeze(-1), projected.reshape(-1, projected.shape[-1])), mask

    def response_logprobs(self, pixels: torch.Tensor | None, prompts: Sequence[str], responses: Sequence[str],
                          image_features: torch.Tensor | None = None) -> ResponseScores:
        """log p(response_i | image_i, prompt_i), summed and per token; differentiable in pixels and parameters.

        ``image_features`` (from :meth:`image_features`) replaces ``pixels`` when the vision encoder's output is
        already known (a frozen tower's features computed once).
        """
        prompts, responses = _texts(prompts, "prompts"), _texts(responses, "responses")
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        features = self._features(pixels, image_features, len(prompts))
        prefixes, tails = self.prompt_ids(prompts), self.response_ids(responses)
        embeds, mask = self._sequences(features, [p + t for p, t in zip(prefixes, tails)])
        b, length = mask.shape
        starts = torch.tensor([len(p) for p in prefixes], device=self.device)
        lengths = torch.tensor([len(t) for t in tails], device=self.device)
        keep = length - int(starts.min()) + 1
        positions = torch.arange(length, device=self.device).expand(b, length)
        logits, _ = self.decoder_logits(embeds, mask, positions, logits_to_keep=keep)
        t = int(lengths.max())
        steps = torch.arange(t, device=self.device)
        scored = steps[None] < lengths[:, None]
        # The logit predicting response token j of row i sits at column starts[i] - 1 + j of the full sequence.
        columns = (starts[:, None] - 1 + steps[None] - (length - keep)).clamp(0, keep - 1)
        picked = logits.gather(1, columns.unsqueeze(-1).expand(b, t, logits.shape[-1])).float()
        targets = torch.zeros(b, t, dtype=torch.long, device=self.device)
        for i, tail in enumerate(tails):
            targets[i, : len(tail)] = torch.tensor(tail, dtype=torch.long)
        log_probs = F.log_softmax(picked, dim=-1).gather(2, targets.unsqueeze(-1)).squeeze(-1)
        per_token = torch.where(scored, log_probs, torch.zeros_like(log_probs))
        greedy = ((self._suppress(picked.detach()).argmax(-1) == targets) | ~scored).all(1)
        return ResponseScores(per_token.sum(1), per_token, scored, greedy)

    @torch.no_grad()
    def generate(self, pixels: torch.Tensor | None, prompts: Sequence[str], max_new_tokens: int = 16,
                 greedy: bool = True, temperature: float = 1.0, seed: int = 0,
                 image_features: torch.Tensor | None = None) -> list[str]:
        """Decode a response per image and prompt: greedy, or sampled at ``temperature`` from a generator seeded
        with ``seed`` (reproducible). Stops at the end-of-sequence token or after ``max_new_tokens``."""
        prompts = _texts(prompts, "prompts")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not greedy and not temperature > 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
        features = self._features(pixels, image_features, len(prompts))
        prefixes = self.prompt_ids(prompts)
        embeds, mask = self._sequences(features, prefixes)
        b, length = mask.shape
        lengths = torch.tensor([len(p) for p in prefixes], device=self.device)
        keep = length - int(lengths.min()) + 1
        positions = torch.arange(length, device=self.device).expand(b, length)
        logits, cache = self.decoder_logits(embeds, mask, positions, use_cache=True, logits_to_keep=keep)
        last = logits[torch.arange(b, device=self.device), lengths - 1 - (length - keep)]
        generator = None if greedy else torch.Generator().manual_seed(int(seed))
        tokens: list[list[int]] = [[] for _ in range(b)]
        done = torch.zeros(b, dtype=torch.bool, device=self.device)
        for step in range(max_new_tokens):
            last = self._suppress(last)
            if greedy:
                token = last.argmax(-1)
            else:
                probs = F.softmax(last.float().cpu() / temperature, dim=-1)
                token = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(self.device)
            finished = token == self.eos_token_id
            for i in (~done & ~finished).nonzero().flatten().tolist():
                tokens[i].append(int(token[i]))
            done |= finished
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype, device=self.device)], dim=1)
            position = (lengths + step)[:, None]
            logits, cache = self.decoder_logits(self.embed_ids(token[:, None]), mask, position, cache=cache,
                                                use_cache=True)
            last = logits[:, -1]
        return [self.decode_ids(t) for t in tokens]


def _suppressed(logits: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    if not ids:
        return logits
    out = logits.clone()
    out[..., list(ids)] = float("-inf")
    return out


def _texts(texts: Sequence[str], what: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of strings, not one string")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what} is empty")
    return texts
