"""The attribute experiment end to end: a quick run on the shipped people model, and the same pipeline on a tiny
transformers CLIPModel built offline from a config."""

import json
import string

import pytest
import torch

from vlalign.experiments.attribute import AttributeExperimentConfig, attribute_experiment, target_checks

ISSUE_KEYS = ("t", "attribute_a_rate", "activity_accuracy", "t_star", "attribute_a_rate_at_t_star", "flipped_rate",
              "activity_accuracy_pretrained", "retrieval_parity_gap")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from vlalign.experiments.attribute import run_attribute_experiment

    out = tmp_path_factory.mktemp("attribute_quick")
    metrics = run_attribute_experiment(out, quick=True, seed=0)
    return out, metrics


def test_quick_run_writes_the_issue_metrics_and_report(quick_run):
    out, metrics = quick_run
    on_disk = json.loads((out / "metrics.json").read_text())
    for key in ISSUE_KEYS:
        assert key in on_disk, key
    assert set(on_disk["retrieval_parity_gap"]) == {"original", "flipped", "neutralized"}
    n_t = len(on_disk["t"])
    assert on_disk["t"][0] == 0.0 and on_disk["t"][-1] == 1.0
    assert len(on_disk["attribute_a_rate"]) == len(on_disk["activity_accuracy"]) == n_t
    for name in ("report.md", "fig3_attribute_sweep.png", "fig4_retrieval_mix.png", "fig4_retrieved_images.png",
                 "dpo/head.safetensors", "dpo/run.json"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "## Targets" in report and "fig3_attribute_sweep.png" in report
    assert "## How far can a linear map neutralize here?" in report and (out / "fig_parity_paths.png").is_file()


def test_counterfactual_reference_paths(quick_run):
    _, m = quick_run
    ideal, linear = m["bounds"]["ideal_eraser"], m["bounds"]["linear_map"]
    # Moving each image towards its twin is symmetric in the style, so predictions balance at the midpoint, where
    # the style is gone and the retrieval test reads (close to) parity.
    assert ideal["t_star"] == pytest.approx(0.5, abs=0.03)
    assert abs(ideal["attribute_a_rate_at_t_star"] - 0.5) <= 0.08
    assert ideal["min_retrieval_parity_gap"] <= 0.15
    assert ideal["retrieval_parity_gap_by_t"][0] == pytest.approx(m["pretrained"]["retrieval_parity_gap"], abs=1e-9)
    # The least-squares map explains much, but not all, of the style change.
    assert 0.3 < linear["explained_change"] < 1.0
    assert 0.85 <= m["flipped_rate_ceiling"] <= 1.0


def test_quick_run_flips_and_finds_a_neutral_point(quick_run):
    _, m = quick_run
    # t = 0 is U Vᵀ, an orthogonal map: every similarity, hence every prediction, equals the pretrained model's.
    assert m["activity_accuracy"][0] == pytest.approx(m["activity_accuracy_pretrained"], abs=1e-9)
    assert m["attribute_a_rate"][0] == pytest.approx(m["pretrained"]["a_rate"], abs=1e-9)
    # Even the smoke-size run flips most predictions, crosses over inside (0, 1) and keeps activity recognition.
    assert m["flipped_rate"] >= 0.8
    assert m["t_star"] is not None and 0 < m["t_star"] < 1
    assert 0 <= m["attribute_a_rate_at_t_star"] <= 1
    assert m["max_activity_drop"] <= 0.05
    # t* lies between the last grid point where P(pred A | A) > P(pred A | B) and the first where it is not.
    i = next(j for j, t in enumerate(m["t"]) if t > m["t_star"])
    assert m["attribute_a_rate_given_a"][i - 1] > m["attribute_a_rate_given_b"][i - 1]
    assert m["attribute_a_rate_given_a"][i] <= m["attribute_a_rate_given_b"][i]


def test_target_checks():
    summary = {"flipped_rate": 0.95, "attribute_a_rate_at_t_star": 0.53, "max_activity_drop": 0.01,
               "retrieval_parity_gap": {"neutralized": 0.08}}
    assert all(target_checks(summary).values())
    summary.update(flipped_rate=0.85, attribute_a_rate_at_t_star=None)
    checks = target_checks(summary)
    assert not checks["flipped_rate >= 0.90"] and not checks["attribute A rate at t* within 0.50 ± 0.05"]


def test_config_errors():
    with pytest.raises(ValueError, match="multiple of"):
        AttributeExperimentConfig(n_test=1000)
    with pytest.raises(ValueError, match="methods"):
        AttributeExperimentConfig(methods=[])


# ----------------------------------------------------------------------------- transformers CLIPModel, offline
def _tiny_hf_clip():
    transformers = pytest.importorskip("transformers")
    from vlalign.models.hf_clip import HFCLIP

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in string.ascii_lowercase + "-":
            vocab[char + suffix] = len(vocab)
    tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=[])  # character level, built in memory
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=48, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    return HFCLIP(transformers.CLIPModel(config).eval(), tokenizer, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25),
                  resize_to=32, crop_size=32).eval()


def test_pipeline_runs_on_a_transformers_clip(tmp_path):
    model = _tiny_hf_clip()
    config = AttributeExperimentConfig(methods=["dpo", "kto"], n_pref=64, n_reg=32, n_test=64, n_galleries=2, top_k=5,
                                       t_points=3, steps=5, batch_size=16)
    metrics = attribute_experiment(model, config, tmp_path)
    for key in ISSUE_KEYS:
        assert key in metrics, key
    assert set(metrics["methods"]) == {"dpo", "kto"}
    assert metrics["t"] == [0.0, 0.5, 1.0]
    assert metrics["activity_accuracy"][0] == pytest.approx(metrics["activity_accuracy_pretrained"], abs=1e-9)
    assert metrics["head"]["orthogonality_error"] > 0  # the head was trained away from the identity
    assert (tmp_path / "report.md").is_file() and (tmp_path / "fig3_attribute_sweep.png").is_file()
    assert set(metrics["bounds"]) == {"ideal_eraser", "linear_map"}
    assert not (tmp_path / "dpo").exists()  # no model spec given: heads are not saved
