"""A word-level tokenizer for MiniCLIP, with its vocabulary stored in the checkpoint's config."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
_WORD = re.compile(r"[a-z0-9\-]+")


def split_words(text: str) -> list[str]:
    """Lower-cased word pieces of ``text``; punctuation is dropped."""
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Maps texts to fixed-length id tensors: ``<bos> words… <eos> <pad>…``; unknown words become ``<unk>``."""

    def __init__(self, vocab: Sequence[str], max_length: int = 16) -> None:
        vocab = list(vocab)
        if list(vocab[: len(SPECIALS)]) != list(SPECIALS):
            vocab = list(SPECIALS) + [w for w in vocab if w not in SPECIALS]
        if len(set(vocab)) != len(vocab):
            raise ValueError("tokenizer vocabulary has duplicate words")
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3, got {max_length}")
        self.vocab = vocab
        self.max_length = max_length
        self.index = {w: i for i, w in enumerate(vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    @classmethod
    def from_texts(cls, texts: Sequence[str], max_length: int = 16) -> "WordTokenizer":
        """A tokenizer whose vocabulary is every word in ``texts`` (sorted, for determinism)."""
        words = sorted({w for t in texts for w in split_words(t)})
        return cls(list(SPECIALS) + words, max_length)

    def unknown_words(self, texts: Sequence[str]) -> list[str]:
        """Words of ``texts`` outside the vocabulary."""
        return sorted({w for t in texts for w in split_words(t) if w not in self.index})

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        ids = torch.full((len(texts), self.max_length), self.index[PAD], dtype=torch.long)
        lengths = torch.empty(len(texts), dtype=torch.long)
        unk = self.index[UNK]
        for row, text in enumerate(texts):
            words = [self.index.get(w, unk) for w in split_words(text)][: self.max_length - 2]
            seq = [self.index[BOS], *words, self.index[EOS]]
            ids[row, : len(seq)] = torch.tensor(seq)
            lengths[row] = len(seq)
        return {"input_ids": ids, "attention_mask": (torch.arange(self.max_length)[None] < lengths[:, None]).long()}
