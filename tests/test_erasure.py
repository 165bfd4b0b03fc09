"""Counterfactual reference paths (vlalign.evaluation.erasure) against closed forms and hand-worked cases."""

import pytest
import torch
import torch.nn.functional as F

from vlalign.evaluation.erasure import (
    apply_map, explained_change, fit_counterfactual_map, interpolate_map, twin_mixture, window_below,
)


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_twin_mixture_endpoints_and_midpoint():
    e, t = _unit(10, 6, 0), _unit(10, 6, 1)
    assert torch.allclose(twin_mixture(e, t, 0.0), e, atol=1e-6)
    assert torch.allclose(twin_mixture(e, t, 1.0), t, atol=1e-6)
    mid = twin_mixture(e, t, 0.5)
    assert torch.allclose(mid, F.normalize(e + t, dim=1), atol=1e-6)
    # The midpoint is symmetric in the pair: an image and its twin land on the same point.
    assert torch.allclose(mid, twin_mixture(t, e, 0.5), atol=1e-6)
    with pytest.raises(ValueError, match="w must lie"):
        twin_mixture(e, t, 1.5)
    with pytest.raises(ValueError, match="same shape"):
        twin_mixture(e, t[:5], 0.5)


def test_fit_recovers_an_exact_linear_swap():
    # Twins made by a reflection: the fit (tiny ridge) finds it, explains all of the change, and its midpoint
    # I + (W − I)/2 is the projection that removes the reflected direction.
    d = 8
    u = F.normalize(torch.randn(d, generator=torch.Generator().manual_seed(2)), dim=0)
    reflection = torch.eye(d) - 2 * torch.outer(u, u)
    e = torch.randn(200, d, generator=torch.Generator().manual_seed(3))
    w = fit_counterfactual_map(e, e @ reflection.t(), ridge=1e-6)
    assert torch.allclose(w, reflection, atol=1e-4)
    assert explained_change(e, e @ reflection.t(), w) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(interpolate_map(w, 0.5), torch.eye(d) - torch.outer(u, u), atol=1e-4)


def test_fit_matches_the_normal_equations_and_ridge_pulls_to_identity():
    e, t = _unit(30, 5, 4), _unit(30, 5, 5)
    ridge = 0.7
    w = fit_counterfactual_map(e, t, ridge).double()
    # Gradient of Σ‖W e_i − t_i‖² + ridge ‖W − I‖² vanishes at the solution (float64 check).
    grad = 2 * (e.double() @ w.t() - t.double()).t() @ e.double() + 2 * ridge * (w - torch.eye(5, dtype=torch.float64))
    assert float(grad.abs().max()) < 1e-4
    assert torch.allclose(fit_counterfactual_map(e, t, 1e9), torch.eye(5), atol=1e-6)
    with pytest.raises(ValueError, match="ridge"):
        fit_counterfactual_map(e, t, 0.0)


def test_explained_change_is_zero_for_the_identity_and_interpolation_endpoints():
    e, t = _unit(20, 4, 6), _unit(20, 4, 7)
    assert explained_change(e, t, torch.eye(4)) == pytest.approx(0.0, abs=1e-9)
    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(8))
    assert torch.equal(interpolate_map(w, 0.0), torch.eye(4)) and torch.allclose(interpolate_map(w, 1.0), w)
    assert torch.allclose(apply_map(e, torch.eye(4)), e, atol=1e-6)
    with pytest.raises(ValueError, match="no change"):
        explained_change(e, e, torch.eye(4))
    with pytest.raises(ValueError, match="square"):
        interpolate_map(torch.zeros(2, 3), 0.5)


def test_window_below():
    t = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert window_below(t, [0.9, 0.3, 0.05, 0.08, 0.6], 0.1) == (0.5, 0.75)
    assert window_below(t, [0.9] * 5, 0.1) is None
    with pytest.raises(ValueError, match="length"):
        window_below(t, [0.1], 0.1)
