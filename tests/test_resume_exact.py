"""Exact resume of the one loop beyond the shipped methods: a method that draws from the global torch RNG (dropout)
resumes bit-identically, the uninterrupted run's global RNG stream is the one it always was, and counters kept
across calls (images skipped per stream) continue where they stopped."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import default_collate

from vlalign.data.datasets import TensorImageDataset
from vlalign.training.loop import fit
from vlalign.training.method import Method, Stream
from vlalign.training.train_config import TrainConfig

SGD = TrainConfig(steps=6, batch_size=8, optimizer="sgd", lr=0.1, warmup_fraction=0.0, schedule="constant",
                  checkpoint_every=2, log_every=1)


class Dropped(Method):
    """A linear model behind ``nn.Dropout(0.5)``: every step draws its mask from the global torch RNG."""

    def __init__(self, stop_at: int | None = None, skips: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(32, 4, generator=g)
        self.linear = nn.Linear(4, 1)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(1, 4, generator=g))
            self.linear.bias.zero_()
        self.drop = nn.Dropout(0.5)
        self.stop_at, self.skips = stop_at, skips
        self.draws: list[torch.Tensor] = []

    def streams(self) -> dict[str, Stream]:
        collate = _collate_with_skips if self.skips else None
        return {"data": Stream(TensorImageDataset(None, n=32), collate=collate),
                "more": Stream(TensorImageDataset(None, n=16), batch_size=4, collate=collate)}

    def trainable_module(self) -> nn.Module:
        return self.linear

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if batch["step"] == self.stop_at:
            raise KeyboardInterrupt
        self.draws.append(torch.rand(2))
        x = self.x[batch["data"]["index"]]
        return {"loss": self.linear(self.drop(x)).pow(2).mean()}


def _collate_with_skips(items: list) -> dict:
    """As the folder datasets' collate with ``on_error: skip``: one undecodable image in every batch."""
    return {**default_collate(items), "skipped": 1}


def _interrupted_then_resumed(out, loop: TrainConfig, **kwargs) -> tuple[Dropped, Any]:
    with pytest.raises(KeyboardInterrupt, match="interrupted at step 3"):
        fit(Dropped(stop_at=3, **kwargs), loop, out, progress=False)
    method = Dropped(**kwargs)
    return method, fit(method, loop, out, progress=False)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_method_that_uses_the_global_rng_resumes_bit_identically(tmp_path, workers):
    torch.set_num_threads(1)
    loop = TrainConfig(**{**SGD.__dict__, "num_workers": workers})
    straight = fit(Dropped(), loop, tmp_path / "a", progress=False)
    _, resumed = _interrupted_then_resumed(tmp_path / "b", loop)
    assert resumed.start_step == 2
    assert torch.equal(straight.model.weight, resumed.model.weight)
    assert torch.equal(straight.model.bias, resumed.model.bias)
    a = load_file(tmp_path / "a" / "state" / "train_state.safetensors")
    b = load_file(tmp_path / "b" / "state" / "train_state.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    rows = lambda folder: (folder / "metrics.csv").read_text().splitlines()  # noqa: E731
    assert rows(tmp_path / "a") == rows(tmp_path / "b")


def test_an_uninterrupted_run_draws_the_global_stream_it_always_drew():
    """Before the fix each DataLoader iterator took one int64 from the global RNG after the seed; the draws of an
    uninterrupted run (and with them every figure made with one) must not move."""
    method = Dropped()
    fit(method, SGD, progress=False)
    torch.manual_seed(SGD.seed)
    for _ in method.streams():
        torch.empty((), dtype=torch.int64).random_()
    expected = []
    for _ in range(SGD.steps):
        expected.append(torch.rand(2))
        torch.empty(8, 4).bernoulli_(0.5)  # the dropout mask of the step
    assert all(torch.equal(d, e) for d, e in zip(method.draws, expected, strict=True))


def test_skipped_image_counts_continue_across_a_resume(tmp_path):
    straight = Dropped(skips=True)
    fit(straight, SGD, tmp_path / "a", progress=False)
    _, resumed = _interrupted_then_resumed(tmp_path / "b", SGD, skips=True)
    assert [row["skipped_data"] for row in resumed.history] == [3.0, 4.0, 5.0, 6.0]  # steps 2..5, one per step
    assert [row["skipped_more"] for row in resumed.history] == [3.0, 4.0, 5.0, 6.0]
    assert (tmp_path / "a" / "metrics.csv").read_text() == (tmp_path / "b" / "metrics.csv").read_text()
    state = json.loads((tmp_path / "b" / "state" / "train_state.json").read_text())
    assert state["skipped"] == {"data": 6, "more": 6}


def test_a_saved_weight_average_that_does_not_fit_the_run_is_refused_by_name(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from vlalign.models.checkpoint import CheckpointError

    loop = TrainConfig(**{**SGD.__dict__, "averaging": "ema"})
    with pytest.raises(KeyboardInterrupt):
        fit(Dropped(stop_at=3), loop, tmp_path, progress=False)
    path = tmp_path / "state" / "train_state.safetensors"
    with safe_open(str(path), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["avg.ema.weight_of_another_method"] = tensors.pop("avg.ema.weight")
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="'ema' weight average does not fit this run: .*'weight'"):
        fit(Dropped(), loop, tmp_path, progress=False)


def test_a_ctrl_c_right_after_a_checkpoint_was_written_names_that_checkpoint(tmp_path, monkeypatch):
    """A Ctrl-C that lands after the state file was replaced but before the loop noted it must not say that
    nothing was saved: the next run resumes from that checkpoint."""
    from vlalign.training import loop

    real = loop.save_training_state

    def save_then_interrupt(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_training_state", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt, match=r"the last checkpoint \(step 2\) in .* is kept"):
        fit(Dropped(), SGD, tmp_path, progress=False)
    monkeypatch.setattr(loop, "save_training_state", real)
    assert fit(Dropped(), SGD, tmp_path, progress=False).start_step == 2
