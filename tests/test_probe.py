"""The linear probe: a multinomial logistic regression checked against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlalign.evaluation.probe import (
    L2_GRID, PROBE_SPLITS, fit_linear_probe, logistic_objective, object_probe, probe_accuracy, select_l2, whitening,
)


def _clusters(n: int, k: int, d: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=torch.Generator().manual_seed(99)) * 6
    labels = torch.arange(n) % k
    return centres[labels] + spread * torch.randn(n, d, generator=g), labels


def test_separable_features_are_recovered_exactly():
    x_train, y_train = _clusters(300, 5, 8, 0.5, seed=0)
    x_test, y_test = _clusters(200, 5, 8, 0.5, seed=1)
    assert probe_accuracy(x_train, y_train, x_test, y_test, 5) == 1.0


def test_labels_unrelated_to_features_give_chance():
    x, _ = _clusters(600, 4, 6, 1.0, seed=0)
    y = torch.randint(0, 4, (600,), generator=torch.Generator().manual_seed(5))
    x2, _ = _clusters(2000, 4, 6, 1.0, seed=1)
    y2 = torch.randint(0, 4, (2000,), generator=torch.Generator().manual_seed(6))
    assert abs(probe_accuracy(x, y, x2, y2, 4) - 0.25) < 0.05


def test_solution_is_a_stationary_point_of_the_objective():
    # Closed-form gradient in numpy (independent of autograd): Zᵀ(P − Y)/n + λW and mean(P − Y).
    x, y = _clusters(200, 3, 5, 3.0, seed=2)
    l2 = 1e-2
    probe = fit_linear_probe(x, y, 3, l2)
    z = probe.transform(x).numpy()
    w, b = probe.weight.numpy(), probe.bias.numpy()
    logits = z @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(3)[y.numpy()]
    grad_w = z.T @ (p - onehot) / len(z) + l2 * w
    grad_b = (p - onehot).mean(0)
    assert np.abs(grad_w).max() < 1e-7 and np.abs(grad_b).max() < 1e-7
    # and the reported loss is the objective there
    nll = -np.log(p[np.arange(len(z)), y.numpy()]).mean() + 0.5 * l2 * (w ** 2).sum()
    assert probe.loss == pytest.approx(nll, rel=1e-10)


def test_two_classes_match_newtons_method_for_binary_logistic_regression():
    # With two classes the penalized softmax solution is symmetric (w₁ = −w₀ = v) and its logit difference is the
    # binary logistic regression with weights 2v and penalty λ/4·‖w‖²; solve that by Newton's method in numpy.
    x, y = _clusters(150, 2, 4, 4.0, seed=3)
    l2 = 0.05
    probe = fit_linear_probe(x, y, 2, l2)
    z = probe.transform(x).numpy()
    a = np.hstack([z, np.ones((len(z), 1))])
    t = y.numpy().astype(float)
    theta = np.zeros(a.shape[1])
    penalty = np.diag([l2 / 2] * z.shape[1] + [0.0])
    for _ in range(50):
        q = 1 / (1 + np.exp(-a @ theta))
        grad = a.T @ (q - t) / len(a) + penalty @ theta
        hess = (a * (q * (1 - q))[:, None]).T @ a / len(a) + penalty
        theta -= np.linalg.solve(hess, grad)
    newton = 1 / (1 + np.exp(-a @ theta))
    ours = torch.softmax(probe.logits(x), 1)[:, 1].numpy()
    assert np.abs(ours - newton).max() < 1e-6


def test_whitening_gives_identity_covariance_and_drops_collinear_features():
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(0)) @ torch.tensor(
        [[3.0, 0.5, 0, 0], [0, 0.1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0.01]])
    x = torch.cat([x, x[:, :1] + x[:, 1:2]], 1)  # a fifth, collinear column
    mean, projection = whitening(x)
    z = (x.double() - mean) @ projection
    assert projection.shape == (5, 4)
    assert torch.allclose(z.T @ z / len(z), torch.eye(4, dtype=torch.float64), atol=1e-8)


def test_select_l2_picks_the_penalty_with_the_best_validation_accuracy():
    # 40 dimensions, few examples: unpenalized, noise dimensions are fitted; the validation split sees it.
    g = torch.Generator().manual_seed(4)
    y = torch.arange(120) % 3
    signal = torch.nn.functional.one_hot(y, 3).double() * 0.6
    x = torch.cat([signal + torch.randn(120, 3, generator=g, dtype=torch.float64), torch.randn(120, 37, generator=g,
                                                                                              dtype=torch.float64)], 1)
    chosen = select_l2(x, y, 3)
    assert chosen in L2_GRID
    # and it is the grid value with the best validation accuracy (recomputed here by brute force)
    order = torch.randperm(120, generator=torch.Generator().manual_seed(0))
    val, fit = order[:30], order[30:]
    scores = {l2: float((fit_linear_probe(x[fit], y[fit], 3, l2).predict(x[val]) == y[val]).double().mean())
              for l2 in L2_GRID}
    assert scores[chosen] == max(scores.values())
    assert chosen == max(l2 for l2, v in scores.items() if v == max(scores.values()))


def test_objective_matches_its_definition():
    w = torch.randn(3, 4, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    x = torch.randn(10, 3, dtype=torch.float64)
    y = torch.arange(10) % 4
    logits = x @ w + b
    expected = float(-(logits.log_softmax(1)[torch.arange(10), y]).mean() + 0.05 * (w ** 2).sum())
    assert float(logistic_objective(w, b, x, y, 0.1)) == pytest.approx(expected, rel=1e-12)


def test_bad_input_fails_clearly():
    with pytest.raises(ValueError, match="labels must lie"):
        fit_linear_probe(torch.randn(4, 2), torch.tensor([0, 1, 2, 5]), 3)
    with pytest.raises(ValueError, match="need features"):
        fit_linear_probe(torch.randn(4), torch.tensor([0, 1, 2, 0]), 3)


def test_object_probe_on_a_tiny_model_is_deterministic(tiny_mini_clip, world):
    from vlalign.data.mini_world import MiniWorld, WorldConfig

    small = MiniWorld(WorldConfig(image_size=32, min_radius=4, max_radius=11))
    first = object_probe(tiny_mini_clip, small, n_train=36, n_test=24)
    assert list(first) == list(PROBE_SPLITS)
    for split, row in first.items():
        assert 0 <= row["probe"] <= 1 and 0 <= row["zero_shot"] <= 1
        assert ("written_label_rate" in row) == (split == "typographic")
    assert object_probe(tiny_mini_clip, small, ("nonreading",), n_train=36, n_test=24) == {"nonreading": first["nonreading"]}
    with pytest.raises(ValueError, match="must differ"):
        object_probe(tiny_mini_clip, small, n_train=8, n_test=8, train_seed=1, test_seed=1)


def test_probe_command_writes_metrics_and_a_report_it_can_rebuild(tmp_path, capsys):
    import json

    from vlalign.cli import main

    out = tmp_path / "probe"
    assert main(["probe", "--n-train", "60", "--n-test", "36", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["splits"]) == list(PROBE_SPLITS)
    assert all(row["l2"] in L2_GRID for row in metrics["splits"].values())  # chosen on the training draw
    splits = metrics["splits"]
    assert metrics["reading_effect"] == splits["nonreading"]["zero_shot"] - splits["typographic"]["zero_shot"]
    # the shipped model reads: a wrong class name fools it more than random letters in the same boxes
    assert splits["typographic"]["zero_shot"] < splits["nonreading"]["zero_shot"]
    assert set(metrics["targets_met"]) == {"clean zero-shot", "typographic zero-shot", "written-label rate",
                                           "typographic probe"}
    for name in ("report.md", "report.html", "probe.png"):
        assert (out / name).is_file()
    assert json.loads((out / "report.json").read_text())["kind"] == "probe"
    body = (out / "report.md").read_text().split("## Run")[0]
    assert "non-reading control" in body and "Reading effect" in body
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text().split("## Run")[0] == body
    assert main(["probe", "--train-seed", "3", "--test-seed", "3", "--out", str(tmp_path / "x")]) == 2
    assert "must differ" in capsys.readouterr().err
