"""The one training loop: sampling, resume (exact, per method), config identity, finished runs, the finite check,
accumulation, clipping and precision."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import torch
from torch import nn

from vlalign.data.datasets import TensorImageDataset
from vlalign.data.mini_world import MiniWorld
from vlalign.data.preference import typographic_preference_data
from vlalign.training.loop import ConfigMismatchError, NonFiniteLossError, fit
from vlalign.training.method import Method, Stream
from vlalign.training.methods.baselines import DefensePrefixTraining, MaterzynskaProjection
from vlalign.training.methods.clip_pretrain import ContrastivePretraining
from vlalign.training.methods.preference import ContrastivePreference, PreferenceConfig
from vlalign.training.methods.robust import RobustConfig, RobustFinetune
from vlalign.training.sampling import StepBatchSampler, batch_indices, process_slice
from vlalign.training.train_config import TrainConfig

from cli_helpers import interrupt_at


# ------------------------------------------------------------------------------------------------ sampling
def test_batches_visit_every_example_once_per_epoch_and_span_epochs():
    n, b = 10, 4
    drawn = torch.cat([batch_indices(n, b, step, seed=3, stream="s") for step in range(5)])  # 20 = two epochs
    assert sorted(drawn[:10].tolist()) == list(range(10)) and sorted(drawn[10:].tolist()) == list(range(10))
    assert not torch.equal(drawn[:10], drawn[10:])  # a new permutation each epoch
    # The same (seed, stream, step) always gives the same batch; another stream or seed another order.
    assert torch.equal(batch_indices(n, b, 2, 3, "s"), drawn[8:12])
    assert not torch.equal(batch_indices(n, b, 0, 3, "t"), drawn[:4])
    assert not torch.equal(batch_indices(n, b, 0, 4, "s"), drawn[:4])


def test_process_slices_partition_each_micro_batch_in_order():
    indices = torch.arange(16)
    parts = [process_slice(indices, 2, micro, 2, rank) for micro in range(2) for rank in range(2)]
    assert torch.equal(torch.cat(parts), indices)
    sampler = StepBatchSampler(40, 16, seed=0, stream="x", start_step=3, total_steps=5, accumulation=2, world=2, rank=1)
    lists = list(sampler)
    assert len(lists) == len(sampler) == 4 and all(len(x) == 4 for x in lists)
    assert lists[0] == batch_indices(40, 16, 3, 0, "x")[4:8].tolist()
    with pytest.raises(ValueError, match="not divisible by accumulation × processes = 2 × 3"):
        StepBatchSampler(40, 16, 0, "x", 0, 1, accumulation=2, world=3)


# --------------------------------------------------------------------------------------- a toy method
class Quadratic(Method):
    """loss = mean over the batch of (w · x_i − y_i)², a method whose gradients are easy to reason about."""

    def __init__(self, n: int = 32, nan_at: int | None = None) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 3, generator=g), torch.randn(n, generator=g)
        self.linear = nn.Linear(3, 1, bias=False)
        nn.init.constant_(self.linear.weight, 0.5)
        self.nan_at = nan_at
        self.calls = 0

    def streams(self) -> dict[str, Stream]:
        return {"data": Stream(TensorImageDataset(None, n=len(self.y)))}

    def trainable_module(self) -> nn.Module:
        return self.linear

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        self.calls += 1
        index = batch["data"]["index"]
        error = self.linear(self.x[index]).squeeze(1) - self.y[index]
        loss = error.pow(2).mean()
        if batch["step"] == self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss, "abs_error": error.abs().mean()}


SGD = TrainConfig(steps=6, batch_size=8, optimizer="sgd", lr=0.1, warmup_fraction=0.0, schedule="constant",
                  checkpoint_every=2, log_every=1)


def test_a_finished_run_is_not_trained_again(tmp_path):
    first = fit(Quadratic(), SGD, tmp_path, progress=False)
    again = Quadratic()
    second = fit(again, SGD, tmp_path, progress=False)
    assert second.already_finished and again.calls == 0 and second.history == []
    assert torch.equal(first.model.weight, second.model.weight)
    state = json.loads((tmp_path / "state" / "train_state.json").read_text())
    assert state["finished"] and state["step"] == 6


def test_resuming_with_another_config_is_refused_naming_the_fields(tmp_path):
    fit(Quadratic(), dataclasses.replace(SGD, steps=3), tmp_path, progress=False)
    with pytest.raises(ConfigMismatchError) as info:
        fit(Quadratic(), dataclasses.replace(SGD, steps=2, lr=0.2), tmp_path, progress=False)
    message = str(info.value)
    assert "train.steps: 3 -> 2" in message and "train.lr: 0.1 -> 0.2" in message and "--overwrite" in message
    # Run-only settings may change between the interrupted and the resumed run.
    assert fit(Quadratic(), dataclasses.replace(SGD, steps=3, log_every=2, checkpoint_every=1), tmp_path,
               progress=False).already_finished
    # --overwrite starts over.
    fresh = Quadratic()
    result = fit(fresh, dataclasses.replace(SGD, steps=2, lr=0.2), tmp_path, progress=False, overwrite=True)
    assert not result.already_finished and result.start_step == 0 and fresh.calls == 2


def test_a_non_finite_loss_stops_before_backward_and_keeps_the_last_checkpoint(tmp_path):
    method = Quadratic(nan_at=3)
    with pytest.raises(NonFiniteLossError) as info:
        fit(method, SGD, tmp_path, progress=False)
    message = str(info.value)
    assert "non-finite loss at step 3 (loss=nan, abs_error=" in message
    assert "the last checkpoint (step 2)" in message
    # Step 3's NaN never reached the weights: they are step 3's starting weights (= the state of step 3).
    assert torch.isfinite(method.linear.weight).all()
    state = json.loads((tmp_path / "state" / "train_state.json").read_text())
    assert state["step"] == 2 and not state["finished"]


def test_accumulated_micro_batches_equal_one_whole_batch():
    whole = fit(Quadratic(), SGD, progress=False)
    accumulated = fit(Quadratic(), dataclasses.replace(SGD, accumulation=4), progress=False)
    assert torch.allclose(whole.model.weight, accumulated.model.weight, rtol=1e-6, atol=1e-7)
    assert [r["loss"] for r in whole.history] == pytest.approx([r["loss"] for r in accumulated.history], rel=1e-6)


def test_gradient_clipping_bounds_the_update():
    unclipped = fit(Quadratic(), dataclasses.replace(SGD, steps=1), progress=False)
    clipped = fit(Quadratic(), dataclasses.replace(SGD, steps=1, grad_clip=1e-3), progress=False)
    start = torch.full((1, 3), 0.5)
    assert float((clipped.model.weight - start).norm()) == pytest.approx(0.1 * 1e-3, rel=1e-4)  # lr · max norm
    assert float((unclipped.model.weight - start).norm()) > 1e-3
    assert clipped.history[0]["grad_norm"] > 1e-3  # the norm before clipping is logged


def test_bf16_autocast_runs_and_keeps_float32_weights():
    result = fit(Quadratic(), dataclasses.replace(SGD, steps=2, precision="bf16"), progress=False)
    assert result.model.weight.dtype == torch.float32 and all(r["loss"] == r["loss"] for r in result.history)


def test_float16_trainable_weights_are_refused_before_any_step():
    from vlalign.config import ConfigError

    method = Quadratic()
    method.linear.half()  # what a checkpoint stored in float16 gives when loaded without a dtype
    with pytest.raises(ConfigError, match="1 trainable parameter tensors are float16: train.optimizer adamw"):
        fit(method, dataclasses.replace(SGD, optimizer="adamw"), progress=False)
    assert method.calls == 0
    method.x, method.y = method.x.half(), method.y.half()
    fit(method, dataclasses.replace(SGD, steps=2), progress=False)  # plain SGD has no eps to underflow
    assert method.calls == 2 and bool(torch.isfinite(method.linear.weight).all())


def test_batch_larger_than_the_data_is_a_clear_error():
    from vlalign.config import ConfigError

    with pytest.raises(ConfigError, match="train.batch_size 64 exceeds the 32 examples of stream 'data'"):
        fit(Quadratic(), dataclasses.replace(SGD, batch_size=64), progress=False)


def test_weight_averages_are_restored_on_resume(tmp_path, monkeypatch):
    loop = dataclasses.replace(SGD, averaging="bma", extra_averaging=["ema"])
    straight = fit(Quadratic(), loop, tmp_path / "a", progress=False)
    _interrupt(monkeypatch, Quadratic, 3, lambda: fit(Quadratic(), loop, tmp_path / "b", progress=False))
    resumed = fit(Quadratic(), loop, tmp_path / "b", progress=False)
    assert resumed.start_step == 2
    assert torch.equal(straight.model.weight, resumed.model.weight)
    assert torch.equal(straight.alternates["ema"].weight, resumed.alternates["ema"].weight)


# ----------------------------------------------------------------------------- exact resume, every method
def _interrupt(monkeypatch, method_class: type, step: int, run) -> None:
    restore = interrupt_at(monkeypatch, method_class, step)
    with pytest.raises(KeyboardInterrupt, match=f"interrupted at step {step}"):
        run()
    restore()


def _preference(model, mode):
    pref, reg = typographic_preference_data(24, 24, seed=11)
    return ContrastivePreference(model, TensorImageDataset(pref.images, chosen=pref.chosen, rejected=pref.rejected),
                                 pref.prompts, TensorImageDataset(reg.images, label=reg.labels),
                                 PreferenceConfig(method="kto" if mode == "head" else "dpo", trainable=mode, lora_rank=2))


def _baseline(model, cls):
    pref, reg = typographic_preference_data(24, 24, seed=11)
    return cls(model, TensorImageDataset(pref.images, chosen=pref.chosen, rejected=pref.rejected), pref.prompts,
               TensorImageDataset(reg.images, label=reg.labels))


def _robust(model, method):
    images = MiniWorld().sample("clean", 24, 5)
    return RobustFinetune(model, TensorImageDataset(images.images, label=images.labels), images.classnames,
                          RobustConfig(method=method, attack_steps=2))


def _pretraining(model, _):
    images = MiniWorld().sample("pretrain", 24, 5)
    return ContrastivePretraining(model, TensorImageDataset(images.images, caption=images.captions))


METHODS = {
    "preference-full": (_preference, "full"), "preference-lora": (_preference, "lora"),
    "preference-head": (_preference, "head"), "tecoa": (_robust, "tecoa"), "fare": (_robust, "fare"),
    "pretraining": (_pretraining, None), "materzynska": (_baseline, MaterzynskaProjection),
    "defense-prefix": (_baseline, DefensePrefixTraining),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_resumed_run_ends_bit_identical_to_an_uninterrupted_one(name, tiny_mini_clip, tmp_path, monkeypatch):
    import copy

    build, arg = METHODS[name]
    loop = TrainConfig(steps=4, batch_size=8, checkpoint_every=2, averaging="bma", log_every=1)
    straight = fit(build(copy.deepcopy(tiny_mini_clip), arg), loop, tmp_path / "a", progress=False)
    method_class = type(build(copy.deepcopy(tiny_mini_clip), arg))
    _interrupt(monkeypatch, method_class, 3,
               lambda: fit(build(copy.deepcopy(tiny_mini_clip), arg), loop, tmp_path / "b", progress=False))
    resumed = fit(build(copy.deepcopy(tiny_mini_clip), arg), loop, tmp_path / "b", progress=False)
    assert resumed.start_step == 2
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    rows = lambda folder: (folder / "metrics.csv").read_text().splitlines()  # noqa: E731
    assert rows(tmp_path / "a") == rows(tmp_path / "b")
    # The whole state, the global RNG included: a resumed run continues the uninterrupted run's random stream.
    from safetensors.torch import load_file

    sa, sb = (load_file(tmp_path / run / "state" / "train_state.safetensors") for run in ("a", "b"))
    assert set(sa) == set(sb) and "rng.torch" in sa
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])][:5]


def test_a_state_that_differs_only_by_an_eval_section_the_run_no_longer_counts_is_the_same_run(tmp_path):
    # Run pipelines used to put their `eval` settings into the identity; a state written then is still their run.
    fit(Quadratic(), SGD, tmp_path, run_config={"data": {"n": 1}, "eval": {"images": 8}}, progress=False)
    assert fit(Quadratic(), SGD, tmp_path, run_config={"data": {"n": 1}}, progress=False).already_finished
    with pytest.raises(ConfigMismatchError, match="data.n: 1 -> 2"):
        fit(Quadratic(), SGD, tmp_path, run_config={"data": {"n": 2}}, progress=False)
    # A run that still counts its eval section is refused when it changes.
    fit(Quadratic(), SGD, tmp_path / "b", run_config={"eval": {"images": 8}}, progress=False)
    with pytest.raises(ConfigMismatchError, match="eval.images: 8 -> 4"):
        fit(Quadratic(), SGD, tmp_path / "b", run_config={"eval": {"images": 4}}, progress=False)
