"""Image-caption retrieval sets: images with several captions each, as a map-style dataset.

Items are dicts ``{"index": int, "pixels": uint8 [3, H, W], "captions": [str, ...]}``; batch them with
:func:`collate_retrieval`, which stacks the pixels and keeps the captions as a list per image (PyTorch's default
collate would transpose them). Every retrieval dataset also exposes ``captions`` (one list per image) so that
frozen caption embeddings can be computed without decoding a single image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from vlalign.data.scene_captions import Claim, Scene


def check_captions(captions: Sequence[Sequence[str]], n_images: int, where: str = "captions") -> None:
    """Raise ValueError unless there is a non-empty list of non-empty strings for each of ``n_images`` images."""
    if len(captions) != n_images:
        raise ValueError(f"{where}: got caption lists for {len(captions)} images, expected {n_images}")
    for i, texts in enumerate(captions):
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError(f"{where}[{i}]: expected a non-empty list of captions, got {texts!r}")
        if not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError(f"{where}[{i}]: every caption must be a non-empty string, got {list(texts)!r}")


def flatten_captions(captions: Sequence[Sequence[str]]) -> tuple[list[str], torch.Tensor]:
    """All captions in image order and, for each, the index of its image -> (texts, ``text_to_image`` [T])."""
    texts = [t for group in captions for t in group]
    owner = torch.repeat_interleave(torch.arange(len(captions)), torch.tensor([len(g) for g in captions], dtype=torch.long))
    return texts, owner


def collate_retrieval(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch retrieval items: ``index`` [B] long, ``pixels`` [B, 3, H, W] uint8, ``captions`` list of lists."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    shapes = {tuple(item["pixels"].shape) for item in items}
    if len(shapes) != 1:
        raise ValueError(f"images in a batch differ in shape {sorted(shapes)}; give the dataset an image_size")
    return {"index": torch.tensor([int(item["index"]) for item in items], dtype=torch.long),
            "pixels": torch.stack([item["pixels"] for item in items]),
            "captions": [list(item["captions"]) for item in items]}


@dataclass
class RetrievalSet(Dataset):
    """Images (uint8 ``[N, 3, H, W]``) held in memory, each with its captions.

    ``scenes`` and ``claims`` (the retrieval world's ground truth: what each image shows and what each caption
    states) are present for generated sets and None for loaded ones.
    """

    images: torch.Tensor
    captions: list[list[str]]
    scenes: list[Scene] | None = None
    claims: list[list[Claim]] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N, 3, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        n = self.images.shape[0]
        check_captions(self.captions, n)
        if self.scenes is not None and len(self.scenes) != n:
            raise ValueError(f"got {len(self.scenes)} scenes for {n} images")
        if self.claims is not None and [len(c) for c in self.claims] != [len(c) for c in self.captions]:
            raise ValueError("claims must hold one claim per caption")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": int(index), "pixels": self.images[index], "captions": list(self.captions[index])}

    def pixels(self, index: slice | torch.Tensor | None = None) -> torch.Tensor:
        """Float pixels in [0, 1] for ``index`` (all images when None)."""
        images = self.images if index is None else self.images[index]
        return images.float().div_(255.0)

    def flat_captions(self) -> tuple[list[str], torch.Tensor]:
        """All captions and the image each belongs to (see :func:`flatten_captions`)."""
        return flatten_captions(self.captions)

    def subset(self, index: torch.Tensor | Sequence[int]) -> "RetrievalSet":
        """The images at ``index`` (a LongTensor or a list of ints), renumbered from 0."""
        rows = torch.as_tensor(index, dtype=torch.long).tolist()
        return RetrievalSet(
            images=self.images[rows], captions=[list(self.captions[i]) for i in rows],
            scenes=None if self.scenes is None else [self.scenes[i] for i in rows],
            claims=None if self.claims is None else [list(self.claims[i]) for i in rows],
        )


def concat_retrieval_sets(parts: Sequence[RetrievalSet]) -> RetrievalSet:
    """One set holding the images of ``parts`` in order (ground truth kept only if every part has it)."""
    if not parts:
        raise ValueError("nothing to concatenate")
    keep_truth = all(p.scenes is not None and p.claims is not None for p in parts)
    return RetrievalSet(
        images=torch.cat([p.images for p in parts]), captions=[c for p in parts for c in p.captions],
        scenes=[s for p in parts for s in p.scenes] if keep_truth else None,
        claims=[c for p in parts for c in p.claims] if keep_truth else None,
    )
