"""The embedded MiniCLIP shows the typographic phenomena it was shipped for, on fresh seeds."""

import json

import pytest

from vlalign.evaluation.probe import object_probe
from vlalign.evaluation.zero_shot import zero_shot_evaluate
from vlalign.models.embeddings import class_text_embeddings
from vlalign.models.loading import embedded_mini_dir

N = 600
SEED = 31337  # never used by pretraining (stream 1) nor by the recorded evaluation (seed 1)


@pytest.fixture(scope="module")
def measured(mini_model, world):
    class_emb = class_text_embeddings(mini_model, world.classnames)
    out = {}
    for split in ("clean", "typographic", "matching", "nonreading"):
        result = zero_shot_evaluate(mini_model, world.sample(split, N, SEED), class_emb)
        out[f"{split}_accuracy"] = result.accuracy
        if split == "typographic":
            out["written_label_rate"] = result.written_label_rate
    probe = object_probe(mini_model, world, splits=("typographic",), n_train=2 * N, n_test=N, train_seed=SEED + 1,
                         test_seed=SEED + 2)
    out["linear_probe"] = probe["typographic"]["probe"]
    return out


def test_targets_hold_on_fresh_seed(measured):
    """Issue 13's shipped-model targets, except the probe's (see the test below)."""
    assert measured["clean_accuracy"] >= 0.85
    assert measured["typographic_accuracy"] <= 0.40
    assert measured["written_label_rate"] >= 0.45
    assert measured["matching_accuracy"] >= measured["clean_accuracy"] - 0.02
    # reading costs more than the letters' occlusion: the control scores above the typographic split
    assert measured["nonreading_accuracy"] >= measured["typographic_accuracy"] + 0.05


def test_the_object_stays_linearly_present_under_a_word(measured):
    """Issue 13's probe target is 0.70: the shipped model reaches 0.713 with `vlalign probe`'s 2,400 training images
    and 0.689 with 1,200 (its metrics.json); here 1,200 training and 600 test images, so allow 3 standard errors
    below the recorded value. The first shipped model (mini-v1) reached 0.48-0.50."""
    assert measured["linear_probe"] >= 0.63


def test_matches_recorded_metrics(measured):
    recorded = json.loads((embedded_mini_dir() / "metrics.json").read_text())
    assert set(recorded) <= set(measured), set(recorded) - set(measured)
    for key, value in recorded.items():
        # 600 fresh images: a binomial standard error of at most 2 points; allow 3 standard errors.
        assert abs(measured[key] - value) <= 0.06, (key, measured[key], value)
