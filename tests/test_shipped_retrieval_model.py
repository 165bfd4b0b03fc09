"""The embedded retrieval MiniCLIP (``mini-retrieval``) loads by name, reads every retrieval-world caption, and
retrieves as recorded in its metrics.json on a fresh test gallery."""

import json

import pytest

from vlalign.data.retrieval_world import RetrievalWorld
from vlalign.evaluation.retrieval_eval import evaluate_retrieval
from vlalign.models.loading import embedded_retrieval_dir, load_model
from vlalign.models.mini_clip import MiniCLIP
from vlalign.models.tokenizer import split_words

N = 1000  # the gallery size the recorded metrics were measured on: recall depends on it
SEED = 31337  # never used by pretraining (train split, seed 0), its evaluation (seed 1) or the AdvLoRA experiment


@pytest.fixture(scope="module")
def model():
    return load_model("mini-retrieval")


@pytest.fixture(scope="module")
def gallery():
    return RetrievalWorld().sample("test", N, SEED)


def test_loads_by_name_and_reads_every_caption(model, gallery):
    assert isinstance(model, MiniCLIP) and not model.training
    assert model.config.image_size == 48
    texts, _ = gallery.flat_captions()
    assert model.tokenizer.unknown_words(texts) == []
    assert all(len(split_words(t)) + 2 <= model.config.max_text_length for t in texts)  # <bos> … <eos>


def test_recall_on_a_fresh_gallery_matches_the_recorded_metrics(model, gallery):
    recall = evaluate_retrieval(model, gallery)
    recorded = json.loads((embedded_retrieval_dir() / "metrics.json").read_text())
    assert recorded["test_images"] == N
    assert recall["mR"] >= 0.5
    for d in ("i2t", "t2i"):
        for k in (1, 5, 10):
            # 1,000 (i2t) or 5,000 (t2i) fresh queries: a binomial standard error of at most 1.6 points; 4 of them.
            assert abs(recall[d][f"r{k}"] - recorded[f"test_{d}_r{k}"]) <= 0.065, (d, k)
    assert abs(recall["mR"] - recorded["test_mR"]) <= 0.04
