"""vlalign.io: every file it writes gets ordinary permissions (0666 minus the umask), never mkstemp's 0600; read_json
names the file in every error."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from vlalign.io import atomic_write_bytes, atomic_write_json, atomic_write_text, save_tensors
from vlalign.models.loading import save_model


@pytest.fixture
def umask_022():
    """A typical user umask, so that the expected mode is the 0644 people see on their checkpoints."""
    old = os.umask(0o022)
    yield 0o022
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_atomic_writer_gives_0644_under_umask_022(tmp_path, umask_022):
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_write_text(tmp_path / "b.txt", "x")
    atomic_write_json(tmp_path / "c.json", {"x": 1})
    save_tensors(tmp_path / "d.safetensors", {"w": torch.ones(2)})
    for name in ("a.bin", "b.txt", "c.json", "d.safetensors"):
        assert mode(tmp_path / name) == 0o644, name


def test_overwriting_a_file_keeps_ordinary_permissions(tmp_path, umask_022):
    # The temporary file is new every time (mkstemp: 0600); the rename must not carry that mode over.
    for _ in range(2):
        save_tensors(tmp_path / "w.safetensors", {"w": torch.zeros(3)})
        atomic_write_json(tmp_path / "m.json", [1])
    assert mode(tmp_path / "w.safetensors") == 0o644 and mode(tmp_path / "m.json") == 0o644


def test_other_umasks_are_respected(tmp_path):
    old = os.umask(0o077)
    try:
        save_tensors(tmp_path / "private.safetensors", {"w": torch.ones(1)})
    finally:
        os.umask(old)
    assert mode(tmp_path / "private.safetensors") == 0o600


def test_a_saved_model_folder_is_readable_by_others(tmp_path, tiny_mini_clip, umask_022):
    save_model(tiny_mini_clip, tmp_path / "model", info={"method": "test"})
    files = sorted(p for p in (tmp_path / "model").iterdir())
    assert [p.name for p in files] == ["config.json", "model.safetensors", "run.json"]
    assert {p.name: mode(p) for p in files} == {p.name: 0o644 for p in files}


class _OwnError(Exception):
    pass


def test_read_json_names_the_file_in_every_failure(tmp_path):
    from vlalign.io import read_json

    good = tmp_path / "good.json"
    good.write_text('{"a": [1, 2]}')
    assert read_json(good, _OwnError, expect=dict) == {"a": [1, 2]}
    cases = [
        ("absent.json", None, dict, "absent.json: missing; a model folder"),
        ("broken.json", b"{not json", None, "broken.json: not valid JSON"),
        ("latin1.json", '{"name": "café"}'.encode("latin-1"), None, "latin1.json: not valid JSON"),
        ("list.json", b"[1, 2]", dict, "list.json: expected an object at the top level, got list"),
    ]
    for name, content, expect, message in cases:
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(_OwnError, match=message):
            read_json(path, _OwnError, "a model folder" if content is None else None, expect)


def test_a_model_folder_whose_config_is_not_an_object_is_refused_by_name(tmp_path):
    from vlalign.models.checkpoint import CheckpointError
    from vlalign.models.loading import load_mini_clip

    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="config.json: expected an object at the top level, got list"):
        load_mini_clip(tmp_path)
