"""Linear probes: how linearly recoverable the object class is from a model's frozen image features.

A model that reads can still keep the object in its features (real CLIP does: Materzynska et al. learn a
projection that forgets spelling and keeps objects), or lose it once a word is present. The probe measures which:
a multinomial logistic regression trained on the frozen features of one draw of a split and tested on another.

Everything is deterministic: features are computed once, in fixed batches; the regression is full-batch L-BFGS in
float64 on whitened features (PCA of the training draw), from zero weights. Whitening matters: the embeddings are
strongly correlated, and with a ridge penalty on merely standardized features the class directions of small
variance are penalized away (on the shipped MiniCLIP's typographic features the test accuracy fell from 0.51 at
L2 1e-5 to 0.38 at 1e-3, and L-BFGS needed thousands of steps); whitened, it converges in ~50 steps and the
accuracy is flat at 0.50 ± 0.005 for L2 from 1e-4 to 1e-1. :func:`object_probe` picks the L2 of each split on a
quarter of its training draw (:func:`select_l2`), then refits on the whole draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlalign.data.mini_world import MiniWorld
from vlalign.evaluation.zero_shot import zero_shot_evaluate
from vlalign.models.base import ContrastiveModel
from vlalign.models.embeddings import class_text_embeddings, image_embeddings

#: The splits a probe run reports, in order: the object with a misleading word, alone, and with random letters.
PROBE_SPLITS: tuple[str, ...] = ("typographic", "clean", "nonreading")


@dataclass
class LinearProbe:
    """A fitted multinomial logistic regression on whitened features: ``logits = ((x − mean) P) W + b``."""

    weight: torch.Tensor  # [R, K] float64
    bias: torch.Tensor  # [K]
    mean: torch.Tensor  # [D]
    projection: torch.Tensor  # [D, R]: whitening, R = the training features' numerical rank
    loss: float  # the training objective at the solution
    iterations: int

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """The whitened features the regression sees."""
        return (features.detach().double().cpu() - self.mean) @ self.projection

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.transform(features) @ self.weight + self.bias

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features).argmax(1)


def logistic_objective(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                       l2: float) -> torch.Tensor:
    """Mean softmax cross-entropy of ``features @ weight + bias`` plus ``l2 / 2 · ‖weight‖²`` (bias unpenalized)."""
    logits = features @ weight + bias
    return torch.nn.functional.cross_entropy(logits, labels) + 0.5 * l2 * weight.pow(2).sum()


def whitening(features: torch.Tensor, rank_tolerance: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and projection [D, R] that map ``features`` to zero mean and identity covariance, dropping
    directions whose variance is below ``rank_tolerance`` × the largest (constant or collinear features)."""
    x = features.detach().double().cpu()
    mean = x.mean(0)
    centred = x - mean
    values, vectors = torch.linalg.eigh(centred.T @ centred / max(len(x), 1))
    keep = values > rank_tolerance * values.max().clamp_min(1e-300)
    return mean, vectors[:, keep] / values[keep].sqrt()


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, n_classes: int, l2: float = 1e-2,
                     max_iter: int = 1000, tolerance: float = 1e-10) -> LinearProbe:
    """Fit :func:`logistic_objective` on whitened ``features`` [N, D] (see :func:`whitening`) with integer
    ``labels`` [N] in ``[0, n_classes)``: full-batch L-BFGS (strong Wolfe line search) in float64 from zero weights.

    The objective is strictly convex for ``l2 > 0`` in the weights, so the solution does not depend on the start;
    with ``l2 = 0`` and separable data the weights grow until ``max_iter`` (accuracy is still exact).
    """
    if features.dim() != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"need features [N, D] and labels [N], got {tuple(features.shape)} and {tuple(labels.shape)}")
    if features.shape[0] == 0:
        raise ValueError("cannot fit a probe on no examples")
    if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes - 1}]")
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    y = labels.detach().long().cpu()
    mean, projection = whitening(features)
    z = (features.detach().double().cpu() - mean) @ projection
    weight = torch.zeros(z.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=tolerance,
                                  tolerance_change=1e-14, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = logistic_objective(weight, bias, z, y, l2)
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        loss = float(logistic_objective(weight, bias, z, y, l2))
    iterations = int(optimizer.state[optimizer._params[0]].get("n_iter", 0))
    return LinearProbe(weight.detach(), bias.detach(), mean, projection, loss, iterations)


#: L2 penalties :func:`select_l2` tries, on whitened features.
L2_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)


def select_l2(features: torch.Tensor, labels: torch.Tensor, n_classes: int, grid: tuple[float, ...] = L2_GRID,
              validation_fraction: float = 0.25, seed: int = 0) -> float:
    """The L2 of ``grid`` whose probe, fitted on the rest, is most accurate on a fixed random ``validation_fraction``
    of the examples (ties go to the larger penalty). Only the training draw is used; the test draw stays unseen."""
    n = features.shape[0]
    n_val = int(round(n * validation_fraction))
    if not 0 < n_val < n:
        raise ValueError(f"cannot hold out {validation_fraction} of {n} examples for choosing L2")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, fit = order[:n_val], order[n_val:]
    best, best_accuracy = None, -1.0
    for l2 in sorted(grid, reverse=True):
        probe = fit_linear_probe(features[fit], labels[fit], n_classes, l2)
        accuracy = float((probe.predict(features[val]) == labels[val]).double().mean())
        if accuracy > best_accuracy:
            best, best_accuracy = l2, accuracy
    return best


def probe_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                   test_labels: torch.Tensor, n_classes: int, l2: float = 1e-2) -> float:
    """Accuracy on the test draw of a probe fitted on the training draw."""
    probe = fit_linear_probe(train_features, train_labels, n_classes, l2)
    return float((probe.predict(test_features) == test_labels).double().mean())


@torch.no_grad()
def object_probe(model: ContrastiveModel, world: MiniWorld | None = None, splits: tuple[str, ...] = PROBE_SPLITS,
                 n_train: int = 2400, n_test: int = 1200, train_seed: int = 7100, test_seed: int = 7200,
                 l2: float | None = None, batch_size: int = 256) -> dict[str, dict]:
    """Per split: the object probe's test accuracy on frozen (normalized) image embeddings, and the model's own
    zero-shot accuracy on the same test images (plus its written-label rate where a class name is written).

    The probe is trained on ``n_train`` images of the split drawn with ``train_seed`` and tested on ``n_test``
    images drawn with ``test_seed``, over all classes of the world. ``l2`` None: chosen per split by
    :func:`select_l2` on the training draw.
    """
    world = world or MiniWorld()
    if train_seed == test_seed:
        raise ValueError("train_seed and test_seed must differ: the probe is tested on another draw")
    class_emb = class_text_embeddings(model, world.classnames)
    results: dict[str, dict] = {}
    for split in splits:
        train = world.sample(split, n_train, train_seed)
        test = world.sample(split, n_test, test_seed)
        train_features = image_embeddings(model, train, batch_size)
        test_features = image_embeddings(model, test, batch_size)
        penalty = select_l2(train_features, train.labels, len(world.classnames)) if l2 is None else l2
        probe = fit_linear_probe(train_features, train.labels, len(world.classnames), penalty)
        zero_shot = zero_shot_evaluate(model, test, class_emb, batch_size).metrics()
        results[split] = {"probe": float((probe.predict(test_features) == test.labels).double().mean()),
                          "probe_train": float((probe.predict(train_features) == train.labels).double().mean()),
                          "zero_shot": zero_shot["accuracy"], "n_train": n_train, "n_test": n_test,
                          "probe_iterations": probe.iterations, "l2": penalty}
        if "written_label_rate" in zero_shot:
            results[split]["written_label_rate"] = zero_shot["written_label_rate"]
    return results
