"""`make setup` passes TORCH_INDEX to the torch install only, and leaves pip's configuration alone by default."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def planned_pip_commands(*variables: str) -> list[str]:
    """The pip lines `make setup` would run (make -n: nothing is executed)."""
    result = subprocess.run(["make", "-n", "-B", "setup", *variables], cwd=ROOT, capture_output=True, text=True,
                            check=True)
    return [line for line in result.stdout.splitlines() if "pip install" in line]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_torch_index_goes_to_the_torch_install_only():
    lines = planned_pip_commands("TORCH_INDEX=--index-url https://download.pytorch.org/whl/cpu")
    torch_line = next(line for line in lines if '"torch==' in line)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_line
    assert all("download.pytorch.org" not in line for line in lines if line != torch_line)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_by_default_pip_configuration_decides():
    lines = planned_pip_commands()
    assert all("--index-url" not in line and "download.pytorch.org" not in line for line in lines)
    assert any('"torch==2.13.0"' in line for line in lines)
