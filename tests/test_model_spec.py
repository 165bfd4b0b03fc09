"""Model specs that are neither a folder nor a cached hub id fail at once, without touching the network."""

from __future__ import annotations

import socket
import time

import pytest
from huggingface_hub import constants

from vlalign.models import hf_clip, loading
from vlalign.models.checkpoint import CheckpointError
from vlalign.models.loading import load_model
from vlalign.models.vlm_loading import load_vlm


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


def mistyped_folder_error(tmp_path, monkeypatch, offline: str | None, existing: str, load, spec: str) -> str:
    """The error of ``load(spec)`` run from a folder holding ``runs/<existing>``, with HF_HUB_OFFLINE as given (None:
    unset); it must come within a second, without a network call."""
    (tmp_path / "runs" / existing).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    if offline is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the environment of a user who set nothing
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    start = time.monotonic()
    with pytest.raises(CheckpointError) as info:
        load(spec)
    assert time.monotonic() - start < 1.0
    return str(info.value)


@pytest.mark.parametrize("offline", [None, "1"])
def test_a_mistyped_run_folder_fails_fast_offline(tmp_path, monkeypatch, no_network, empty_cache, calls, offline):
    message = mistyped_folder_error(tmp_path, monkeypatch, offline, "tiny_dpo", load_model, "runs/tiny_dpoo")
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


# ------------------------------------------------------------------------------ generative VLMs (load_vlm)


@pytest.fixture
def llava_calls(monkeypatch):
    """Record HFLlava.from_pretrained calls instead of loading anything."""
    from vlalign.models.hf_llava import HFLlava

    seen = []

    def fake(name, local_files_only=None, **kwargs):
        seen.append((str(name), local_files_only))
        raise CheckpointError(f"fake load of {name}")

    monkeypatch.setattr(HFLlava, "from_pretrained", staticmethod(fake))
    return seen


def _cache_model(cache, repo: str, config: str) -> None:
    """Put a hub id's config.json into the (temporary) hub cache, laid out as huggingface_hub does."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / "abc123").mkdir(parents=True)
    (folder / "snapshots" / "abc123" / "config.json").write_text(config)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("abc123")


@pytest.mark.parametrize("offline", [None, "1"])
def test_load_vlm_on_a_mistyped_run_folder_fails_fast(tmp_path, monkeypatch, no_network, empty_cache, llava_calls,
                                                      offline):
    """It used to retry the hub for ~50 s (HFLlava.from_pretrained with downloads allowed) and suggest nothing."""
    message = mistyped_folder_error(tmp_path, monkeypatch, offline, "adpo_run", load_vlm, "runs/adpo_rn")
    assert message.startswith("runs/adpo_rn: no such folder (did you mean runs/adpo_run?), and not in the local "
                              f"hub cache ({empty_cache})")
    assert "HF_HUB_OFFLINE=0" in message
    with pytest.raises(CheckpointError, match=r"^\./runs/adpo_rn: model folder not found \(did you mean "
                                              r"runs/adpo_run\?\)$"):
        load_vlm("./runs/adpo_rn")
    with pytest.raises(CheckpointError, match=r"^runs/a/b: no such model folder, nor a valid hub id$"):
        load_vlm("runs/a/b")
    assert llava_calls == []  # transformers was never asked


def test_load_vlm_loads_a_cached_llava_from_the_cache_only(monkeypatch, no_network, empty_cache, llava_calls):
    _cache_model(empty_cache, "someone/tiny-llava", '{"model_type": "llava"}')
    _cache_model(empty_cache, "someone/tiny-clip", '{"model_type": "clip"}')
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(CheckpointError, match="fake load"):
        load_vlm("someone/tiny-llava")
    assert llava_calls == [("someone/tiny-llava", True)]
    with pytest.raises(CheckpointError, match=r"config.json: model_type 'clip' is not a generative VLM"):
        load_vlm("someone/tiny-clip")
    assert len(llava_calls) == 1


def test_load_vlm_downloads_only_with_hf_hub_offline_0(monkeypatch, empty_cache, llava_calls):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(CheckpointError, match="fake load"):
        load_vlm("someone/not-cached")
    assert llava_calls == [("someone/not-cached", False)]
