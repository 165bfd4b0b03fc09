"""Data parallelism through Accelerate: 2 CPU processes with per-process batch B/2 end where 1 process with
batch B ends (full-tower DPO, KTO — whose reference point z_ref is a global batch statistic — FARE, and AdvLoRA,
whose InfoNCE and training attack span the global batch)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vlalign.models.checkpoint import load_tensors

HERE = Path(__file__).resolve().parent
#: Only the order in which floats are summed differs (each process sums half of every batch), so with SGD the two
#: runs' weights differ by ~1e-6 of how far training moved them (measured: DPO 3e-6, KTO 8e-7); FARE's PGD takes
#: signs of gradients, which can turn a float difference into a step, so it gets more room (measured 3e-5).
#: A wrong reduction differs far more: a per-process KTO z_ref gives 1.6e-3.
RELATIVE_TOLERANCE = {"dpo": 1e-4, "kto": 1e-4, "fare": 1e-3, "advlora": 1e-3}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("ddp")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(HERE / "distributed_job.py"), str(out)]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=HERE.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def test_two_processes_train_like_one_with_the_whole_batch(two_process_run, tmp_path):
    sys.path.insert(0, str(HERE))
    try:
        from distributed_job import JOBS, run_jobs, tiny_model
    finally:
        sys.path.remove(str(HERE))
    histories = run_jobs(tmp_path)
    out, stdout = two_process_run
    start = tiny_model().image_encoder.state_dict()
    for job in JOBS:
        one, two = load_tensors(tmp_path / f"{job}.safetensors"), load_tensors(out / f"{job}.safetensors")
        assert set(one) == set(two) == set(start)
        # Compare the updates: how far the two runs' weights differ, relative to how far training moved them.
        moved = max(float((one[k] - start[k]).abs().max()) for k in one)
        differ = max(float((one[k] - two[k]).abs().max()) for k in one)
        assert moved > 1e-3, (job, moved)
        assert differ <= RELATIVE_TOLERANCE[job] * moved, (job, differ, moved)
        # The logged losses (means over both processes' halves) match the single process's.
        logged = [float(x) for x in stdout.split(f"{job} [")[1].split("]")[0].split(",")]
        assert logged == pytest.approx([row["loss"] for row in histories[job]], rel=1e-4)


def test_shutdown_is_the_identity_in_one_process():
    import torch.distributed as dist

    from vlalign.training import distributed

    distributed.shutdown()
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert not (dist.is_available() and dist.is_initialized())


def test_the_train_command_runs_under_accelerate_launch(tmp_path, tiny_mini_clip):
    """``accelerate launch … vlalign train`` as the README shows it: both processes exit cleanly, the main process
    alone writes the run and prints its metrics."""
    import yaml

    from vlalign.models.loading import save_mini_clip

    save_mini_clip(tiny_mini_clip, tmp_path / "tiny")
    config = tmp_path / "fare.yaml"
    config.write_text(yaml.safe_dump({"method": "fare", "model": str(tmp_path / "tiny"), "options": {"attack_steps": 2},
                                      "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 2},
                                      "data": {"images": 32},
                                      "eval": {"images": 12, "steps": 2, "attacks": ["pgd"], "eps": ["4/255"]}}))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "-m", "vlalign.cli", "train", "--config", str(config),
               "--out", str(tmp_path / "run")]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "terminate called" not in done.stderr
    assert done.stdout.count('"method": "fare"') == 1  # printed by the main process only
    assert {"model.safetensors", "metrics.json", "report.md"} <= {p.name for p in (tmp_path / "run").iterdir()}
