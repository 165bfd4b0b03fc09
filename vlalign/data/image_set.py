"""An in-memory labelled image set: the common currency between data, training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageSet:
    """Images as uint8 ``[N, 3, H, W]`` with class labels over ``classnames``.

    ``written`` holds, per image, the index of the class name written on it (-1 for none); it is what a
    text-reading model may follow instead of the object. ``captions`` are free-text descriptions.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classnames: tuple[str, ...]
    written: torch.Tensor | None = None
    captions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N, 3, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        n = self.images.shape[0]
        if self.labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(self.labels.shape)}")
        if len(set(self.classnames)) != len(self.classnames):
            dupes = sorted({c for c in self.classnames if self.classnames.count(c) > 1})
            raise ValueError(f"class list has duplicates: {dupes}")
        if not self.classnames:
            raise ValueError("class list is empty")
        if n and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classnames)):
            raise ValueError(f"labels must lie in [0, {len(self.classnames) - 1}]")
        if self.written is None:
            self.written = torch.full((n,), -1, dtype=torch.long)
        if self.written.shape != (n,):
            raise ValueError(f"written must have shape ({n},), got {tuple(self.written.shape)}")
        if self.captions and len(self.captions) != n:
            raise ValueError(f"got {len(self.captions)} captions for {n} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    def pixels(self, index: slice | torch.Tensor | None = None) -> torch.Tensor:
        """Float pixels in [0, 1] for ``index`` (all images when None)."""
        images = self.images if index is None else self.images[index]
        return images.float().div_(255.0)

    def subset(self, index: torch.Tensor) -> "ImageSet":
        """The images at ``index`` (a LongTensor or bool mask), same class list."""
        return ImageSet(
            images=self.images[index],
            labels=self.labels[index],
            classnames=self.classnames,
            written=self.written[index],
            captions=[self.captions[i] for i in torch.arange(len(self))[index].tolist()] if self.captions else [],
        )
