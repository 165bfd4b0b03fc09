"""Model specs that are neither a folder nor a cached hub id fail at once, without touching the network."""

from __future__ import annotations

import socket
import time

import pytest
from huggingface_hub import constants

from vlalign.models import hf_clip, loading
from vlalign.models.checkpoint import CheckpointError
from vlalign.models.loading import load_model


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test (a hub lookup would)."""
    def refuse(*args, **kwargs):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def calls(monkeypatch):
    """Record HFCLIP.from_pretrained calls instead of loading anything."""
    seen = []

    def fake(name, local_files_only=None):
        seen.append((str(name), local_files_only))
        raise CheckpointError(f"fake load of {name}")

    monkeypatch.setattr(hf_clip.HFCLIP, "from_pretrained", staticmethod(fake))
    return seen


@pytest.mark.parametrize("offline", [None, "1"])
def test_a_mistyped_run_folder_fails_fast_offline(tmp_path, monkeypatch, no_network, empty_cache, calls, offline):
    (tmp_path / "runs" / "tiny_dpo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    if offline is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the environment of a user who set nothing
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    start = time.monotonic()
    with pytest.raises(CheckpointError) as info:
        load_model("runs/tiny_dpoo")
    assert time.monotonic() - start < 1.0
    message = str(info.value)
    assert message.startswith("runs/tiny_dpoo: no such folder (did you mean runs/tiny_dpo?), and not in the local "
                              f"hub cache ({empty_cache})")
    assert "HF_HUB_OFFLINE=0" in message  # how to go online
    assert calls == []  # transformers was never asked


def test_a_cached_hub_id_loads_from_the_cache_only(monkeypatch, no_network, empty_cache, calls):
    snapshot = empty_cache / "models--someone--tiny-clip" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"model_type": "clip"}')
    (empty_cache / "models--someone--tiny-clip" / "refs").mkdir()
    (empty_cache / "models--someone--tiny-clip" / "refs" / "main").write_text("abc123")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(CheckpointError, match="fake load"):
        load_model("someone/tiny-clip")
    assert calls == [("someone/tiny-clip", True)]


def test_downloads_are_opt_in_with_hf_hub_offline_0(monkeypatch, empty_cache, calls):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert loading.hub_downloads_allowed()
    with pytest.raises(CheckpointError, match="fake load"):
        load_model("someone/not-cached")
    assert calls == [("someone/not-cached", False)]
    for value in ("1", "", "true"):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert not loading.hub_downloads_allowed()


def test_names_that_are_neither_folders_nor_hub_ids(tmp_path, monkeypatch, no_network, empty_cache, calls):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"^runs/a/b: no such model folder, nor a valid hub id$"):
        load_model("runs/a/b")
    with pytest.raises(CheckpointError, match="model folder not found"):
        load_model("./runs/x")
    assert calls == []
