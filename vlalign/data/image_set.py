"""An in-memory labelled image set: the common currency between data, training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageSet:
    """Images as uint8 ``[N, 3, H, W]`` with class labels over ``classnames``.

    ``written`` holds, per image, the index of the class name written on it (-1 for none), ``[N]``; an image
    carrying several class names has a row of indices, ``[N, W]`` padded with -1. It is what a text-reading
    model may follow instead of the object. ``captions`` are free-text descriptions; ``files`` the images'
    source files (relative to their folder) when loaded from disk; ``load_warnings`` counts the images the
    loader had to distort (extreme aspect ratio cropped, tiny image upscaled, ...), by kind.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classnames: tuple[str, ...]
    written: torch.Tensor | None = None
    captions: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    load_warnings: dict[str, int] = field(default_factory=dict)

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
        if self.written.dim() not in (1, 2) or self.written.shape[0] != n:
            raise ValueError(f"written must have shape ({n},) or ({n}, W), got {tuple(self.written.shape)}")
        if self.written.numel() and (int(self.written.min()) < -1 or int(self.written.max()) >= len(self.classnames)):
            raise ValueError(f"written must lie in [-1, {len(self.classnames) - 1}] (-1: no word)")
        if self.captions and len(self.captions) != n:
            raise ValueError(f"got {len(self.captions)} captions for {n} images")
        if self.files and len(self.files) != n:
            raise ValueError(f"got {len(self.files)} file names for {n} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    def pixels(self, index: slice | torch.Tensor | None = None) -> torch.Tensor:
        """Float pixels in [0, 1] for ``index`` (all images when None)."""
        images = self.images if index is None else self.images[index]
        return images.float().div_(255.0)

    def written_words(self, i: int) -> list[int]:
        """Indices of the class names written on image ``i`` (empty when none)."""
        row = self.written[i].reshape(-1).tolist()
        return [w for w in row if w >= 0]

    def subset(self, index: torch.Tensor) -> "ImageSet":
        """The images at ``index`` (a LongTensor or bool mask), same class list."""
        rows = torch.arange(len(self))[index].tolist()
        return ImageSet(
            images=self.images[index],
            labels=self.labels[index],
            classnames=self.classnames,
            written=self.written[index],
            captions=[self.captions[i] for i in rows] if self.captions else [],
            files=[self.files[i] for i in rows] if self.files else [],
        )
