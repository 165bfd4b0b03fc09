"""Shared fixtures. Tests run offline, on small sizes, with few threads."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One intra-op thread: the tests use small tensors, and on a machine whose cores are busy (CI runners, shared
# boxes) every OpenMP barrier of a second thread waits for a time slice -- a tiny forward pass went from 3 ms
# to 600 ms with two threads.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mini_model():
    """The embedded MiniCLIP (loaded once per test session; tests must not modify it)."""
    from vlalign.models.loading import load_model

    return load_model("mini")


@pytest.fixture(scope="session")
def world():
    from vlalign.data.mini_world import MiniWorld

    return MiniWorld()


@pytest.fixture
def tiny_mini_clip():
    """A randomly initialized, very small MiniCLIP for fast unit tests."""
    from vlalign.data.mini_world import vocabulary
    from vlalign.models.mini_clip import MiniCLIP, MiniCLIPConfig

    torch.manual_seed(0)
    return MiniCLIP(MiniCLIPConfig(image_size=32, stem_channels=(8, 16, 32), vision_width=32, vision_layers=1,
                                   vision_heads=2, text_width=32, text_layers=1, text_heads=2, embed_dim=16,
                                   vocab=vocabulary())).eval()
