"""Unlabelled image folders (AdPO trains label-free on any images, as the paper does on ImageNet)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vlalign.data.folder import DatasetError, load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class UnlabelledImages(Dataset):
    """Every image file under ``folder`` (recursively, in sorted path order); items ``{"index", "pixels"}`` with
    uint8 ``[3, image_size, image_size]`` pixels (shorter side resized, then centre-cropped)."""

    def __init__(self, folder: str | Path, image_size: int) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DatasetError(f"{self.folder}: image folder not found")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.paths = sorted(p for p in self.folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise DatasetError(f"{self.folder}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.image_size = image_size

    def content_sources(self) -> tuple[list[Path], list[Path]]:
        """No record file; the images."""
        return [], list(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        image = load_image(path, self.image_size, str(self.folder))
        return {"index": index, "pixels": torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()}


class PromptedImageFolder(UnlabelledImages):
    """An unlabelled image folder whose image ``i`` is asked ``prompts[i % len(prompts)]``: items ``{"index",
    "pixels", "prompt"}``, AdPO's label-free training set on the user's own images."""

    def __init__(self, folder: str | Path, image_size: int, prompts: list[str]) -> None:
        super().__init__(folder, image_size)
        if not prompts:
            raise ValueError("PromptedImageFolder needs at least one prompt")
        self.prompts = list(prompts)

    def __getitem__(self, index: int) -> dict:
        return {**super().__getitem__(index), "prompt": self.prompts[index % len(self.prompts)]}
