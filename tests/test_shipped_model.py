"""The embedded MiniCLIP shows the typographic phenomena it was shipped for, on fresh seeds."""

import json

import pytest

from vlalign.evaluation.zero_shot import zero_shot_evaluate
from vlalign.models.embeddings import class_text_embeddings
from vlalign.models.loading import embedded_mini_dir

N = 600
SEED = 31337  # never used by pretraining (stream 1) nor by the recorded evaluation (seed 1)


@pytest.fixture(scope="module")
def measured(mini_model, world):
    class_emb = class_text_embeddings(mini_model, world.classnames)
    out = {}
    for split in ("clean", "typographic", "matching"):
        result = zero_shot_evaluate(mini_model, world.sample(split, N, SEED), class_emb)
        out[f"{split}_accuracy"] = result.accuracy
        if split == "typographic":
            out["written_label_rate"] = result.written_label_rate
    return out


def test_targets_hold_on_fresh_seed(measured):
    assert measured["clean_accuracy"] >= 0.85
    assert measured["typographic_accuracy"] <= 0.35
    assert measured["written_label_rate"] >= 0.50
    assert measured["matching_accuracy"] >= measured["clean_accuracy"] - 0.02


def test_matches_recorded_metrics(measured):
    recorded = json.loads((embedded_mini_dir() / "metrics.json").read_text())
    for key, value in recorded.items():
        # 600 fresh images: a binomial standard error of at most 2 points; allow 3 standard errors.
        assert abs(measured[key] - value) <= 0.06, (key, measured[key], value)
