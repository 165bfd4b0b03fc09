"""The rank profile of a fine-tuning change against independent computations: numpy's truncated-SVD residual, a
hand-worked diagonal case, and peft's own LoRA layers for the parameter count."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from vlalign.models.adapters.rank_profile import captured_energy, lora_parameter_count, weight_change_profile


def test_captured_energy_is_one_minus_the_truncated_svd_residual():
    delta = torch.randn(6, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u, s, vt = np.linalg.svd(delta.numpy(), full_matrices=False)
    total = float((delta.numpy() ** 2).sum())
    for r, share in zip((0, 1, 3, 6, 10), captured_energy(delta, (0, 1, 3, 6, 10))):
        approximation = (u[:, :r] * s[:r]) @ vt[:r]
        assert share == pytest.approx(1 - float(((delta.numpy() - approximation) ** 2).sum()) / total, abs=1e-12)


def test_captured_energy_hand_worked_and_edge_cases():
    assert captured_energy(torch.diag(torch.tensor([3.0, 4.0, 0.0])), (1, 2, 5)) == pytest.approx([16 / 25, 1, 1])
    assert captured_energy(torch.zeros(3, 3), (1,)) == [1.0]
    conv = torch.zeros(4, 2, 3, 3)
    conv[0, 1, 2, 2] = 2.0
    assert captured_energy(conv, (1,)) == [1.0]  # a single non-zero entry is rank 1 over the flattened filters
    with pytest.raises(ValueError, match="matrix"):
        captured_energy(torch.ones(3), (1,))


@pytest.mark.parametrize("layer", [nn.Linear(7, 5), nn.Conv2d(3, 4, 3)])
def test_lora_parameter_count_matches_peft(layer):
    from peft import LoraConfig, inject_adapter_in_model

    model = nn.Sequential(layer)
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=["0"]), model)
    counted = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    assert lora_parameter_count(layer.weight.shape, 2) == counted


def test_weight_change_profile_reports_only_changed_matrices():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(8, 6))
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned[3].weight += torch.outer(torch.arange(6.0), torch.ones(8))  # a rank-1 change
        tuned[1].weight += 1.0  # a norm's 1-D weight: not a matrix, not reported
    (change,) = weight_change_profile(base, tuned, ranks=(1, 2))
    assert (change.name, change.shape) == ("3.weight", (6, 8))
    assert change.captured == pytest.approx({1: 1.0, 2: 1.0})
    with torch.no_grad():
        expected = float((tuned[3].weight - base[3].weight).norm() / base[3].weight.norm())
    assert change.relative_change == pytest.approx(expected)
    assert change.lora_params == {1: 14, 2: 28}
    assert weight_change_profile(base, tuned, prefix="0.") == []
    zero = nn.Sequential(nn.Linear(3, 2, bias=False))
    nn.init.zeros_(zero[0].weight)
    moved = copy.deepcopy(zero)
    with torch.no_grad():
        moved[0].weight += 1.0
    assert weight_change_profile(zero, moved)[0].relative_change is None  # no size to be relative to
    with pytest.raises(ValueError, match="no parameter 3.weight"):
        other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(8, 5))
        weight_change_profile(base, other)
