"""BMA and EMA against explicit weighted ensembles (contrastive-PO eqs. 37-39)."""

import math

import pytest
import torch

from vlalign.training.averaging import WeightAverager, beta_pdf, bma_weight


def _trajectory(steps, dim=5):
    torch.manual_seed(0)
    return [torch.randn(dim, dtype=torch.float64) for _ in range(steps + 1)]


def test_beta_pdf_matches_closed_forms():
    assert beta_pdf(0.3, 1.0) == pytest.approx(1.0)  # Beta(1,1) is uniform
    assert beta_pdf(0.25, 2.0) == pytest.approx(6 * 0.25 * 0.75)  # Beta(2,2) = 6x(1-x)
    # Beta(0.5, 0.5) = 1 / (pi sqrt(x(1-x)))
    assert beta_pdf(0.2, 0.5) == pytest.approx(1 / (math.pi * math.sqrt(0.2 * 0.8)))
    # symmetric, U-shaped for gamma < 1
    assert beta_pdf(0.1, 0.7) == pytest.approx(beta_pdf(0.9, 0.7))
    assert beta_pdf(0.05, 0.7) > beta_pdf(0.5, 0.7)


def _average_trajectory(thetas: list[torch.Tensor], kind: str, **kwargs) -> WeightAverager:
    """Start a one-row linear module at thetas[0], step it through thetas[1:], updating an averager after each."""
    module = torch.nn.Linear(thetas[0].numel(), 1, bias=False).double()
    with torch.no_grad():
        module.weight.copy_(thetas[0][None])
    averager = WeightAverager(module, kind, len(thetas) - 1, **kwargs)
    for theta in thetas[1:]:
        with torch.no_grad():
            module.weight.copy_(theta[None])
        averager.update(module)
    return averager


@pytest.mark.parametrize("gamma", [0.5, 0.7, 2.0])
def test_bma_running_average_equals_explicit_ensemble(gamma):
    steps = 12
    thetas = _trajectory(steps)
    averager = _average_trajectory(thetas, "bma", gamma=gamma)
    alphas = torch.tensor([bma_weight(t, steps, gamma) for t in range(steps + 1)], dtype=torch.float64)
    explicit = sum(a * th for a, th in zip(alphas, thetas)) / alphas.sum()  # eq. (37)
    assert torch.allclose(averager.average["weight"][0], explicit, atol=1e-12)


def test_ema_equals_explicit_geometric_weights():
    steps, decay = 7, 0.8
    thetas = _trajectory(steps)
    averager = _average_trajectory(thetas, "ema", decay=decay)
    explicit = decay ** steps * thetas[0] + sum((1 - decay) * decay ** (steps - t) * thetas[t] for t in range(1, steps + 1))
    assert torch.allclose(averager.average["weight"][0], explicit, atol=1e-12)
    module = torch.nn.Linear(5, 1, bias=False).double()
    averager.copy_to(module)
    assert torch.allclose(module.weight[0], explicit)


def test_state_round_trip_and_bad_kind():
    module = torch.nn.Linear(3, 1)
    averager = WeightAverager(module, "bma", 4)
    averager.update(module)
    other = WeightAverager(module, "bma", 4)
    other.load_state_dict(averager.state_dict())
    assert other.step == 1 and other.weight_sum == pytest.approx(averager.weight_sum)
    with pytest.raises(ValueError, match="averaging"):
        WeightAverager(module, "swa", 4)


def test_averages_a_mapping_and_names_a_missing_weight():
    start = {"a": torch.zeros(2, dtype=torch.float64), "b": torch.ones(1, dtype=torch.float64)}
    averager = WeightAverager(start, "ema", 2, decay=0.5)
    averager.update({"a": torch.full((2,), 4.0, dtype=torch.float64), "b": torch.ones(1, dtype=torch.float64)})
    assert averager.average["a"].tolist() == [2.0, 2.0] and start["a"].tolist() == [0.0, 0.0]  # the input is copied
    with pytest.raises(KeyError, match="'b'"):
        averager.load_state_dict({"average": {"a": torch.zeros(2)}, "weight_sum": 0.0, "step": 1})
