"""A real crash: ``vlalign train`` / ``pretrain-mini`` killed with SIGKILL mid-run, then re-run with the same
command, ends with weights identical to a run that was never interrupted (a preference method, FARE, pretraining)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from vlalign.models.checkpoint import load_tensors
from vlalign.models.loading import save_mini_clip

STEPS = 30


def _command(kind: str, config: Path, out: Path) -> list[str]:
    verb = "pretrain-mini" if kind == "pretrain" else "train"
    return [sys.executable, "-m", "vlalign.cli", verb, "--config", str(config), "--out", str(out)]


def _configs(tmp_path: Path, model: Path) -> dict[str, dict]:
    loop = {"steps": STEPS, "batch_size": 8, "checkpoint_every": 3, "log_every": 5}
    return {
        "dpo": {"method": "dpo", "model": str(model), "options": {"trainable": "full", "beta": 0.3}, "train": loop,
                "data": {"n_pref": 32, "n_reg": 32}, "eval": {"images": 12}},
        "fare": {"method": "fare", "model": str(model), "options": {"attack_steps": 1}, "train": loop,
                 "data": {"images": 32}, "eval": {"images": 8, "steps": 1, "attacks": ["fgsm"], "eps": ["4/255"]}},
        "pretrain": {"seed": 3, "n_images": 64, "eval_images": 12, "workers": 1, "train": loop,
                     "world": {"image_size": 32, "min_radius": 5.0, "max_radius": 14.0},
                     "model": {"stem_channels": [8, 16], "vision_width": 16, "vision_layers": 1, "vision_heads": 2,
                               "text_width": 16, "text_layers": 1, "text_heads": 2, "embed_dim": 8}},
    }


def _state_step(out: Path) -> tuple[int, bool]:
    try:
        meta = json.loads((out / "state" / "train_state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return 0, False
    return meta["step"], meta["finished"]


@pytest.mark.parametrize("kind", ["dpo", "fare", "pretrain"])
def test_sigkill_mid_run_then_rerun_equals_an_uninterrupted_run(kind, tmp_path, tiny_mini_clip):
    save_mini_clip(tiny_mini_clip, tmp_path / "model")
    config = tmp_path / f"{kind}.yaml"
    config.write_text(yaml.safe_dump(_configs(tmp_path, tmp_path / "model")[kind]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run(_command(kind, config, tmp_path / "straight"), check=True, env=env, capture_output=True,
                   timeout=600)

    crashed = tmp_path / "crashed"
    process = subprocess.Popen(_command(kind, config, crashed), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while _state_step(crashed)[0] < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    step, finished = _state_step(crashed)
    assert process.returncode == -signal.SIGKILL and not finished and 3 <= step < STEPS, (process.returncode, step)

    resumed = subprocess.run(_command(kind, config, crashed), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from step {step} of {STEPS}" in resumed.stdout + resumed.stderr
    a, b = load_tensors(tmp_path / "straight" / "model.safetensors"), load_tensors(crashed / "model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)

