"""The attribute experiment end to end: a quick run on the shipped people model, and the same pipeline on a tiny
transformers CLIPModel built offline from a config."""

import dataclasses
import json
import string

import pytest
import torch

from vlalign.experiments.attribute import (
    AttributeExperimentConfig, aggregate_seeds, attribute_experiment, attribute_seeds, target_checks,
)
from vlalign.experiments.attribute.seeds import spread

ISSUE_KEYS = ("t", "attribute_a_rate", "activity_accuracy", "t_star", "attribute_a_rate_at_t_star", "flipped_rate",
              "activity_accuracy_pretrained", "retrieval_parity_gap", "retrieval_parity_gap_at_t_star",
              "neutral_window", "retrieval_parity_gap_max", "targets_met")


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
    # The neutralized gap is the gap curve's mean over t* ± w: between its smallest and largest value there.
    lo, hi = m["neutral_window"]
    assert lo == pytest.approx(max(0.0, m["t_star"] - 0.05)) and hi == pytest.approx(min(1.0, m["t_star"] + 0.05))
    inside = [g for t, g in zip(m["t"], m["retrieval_parity_gap_by_t"]) if lo - 0.05 <= t <= hi + 0.05]
    assert min(inside) <= m["retrieval_parity_gap"]["neutralized"] <= max(inside)
    assert m["retrieval_parity_gap_max"] == pytest.approx(0.5 * m["retrieval_parity_gap"]["original"])


def test_headline_barely_moves_when_the_embeddings_move(quick_run):
    """Float noise of another CPU, ~1e-5 relative on every embedding, moves each headline figure of the trained
    head's sweep by far less than the targets' margins (2 points of activity accuracy, several points of flipped
    rate and parity gap). Bounds are loose on purpose: only a jump of a grid step or an edge would break them
    (measured here: nothing moves at 1e-5; at 1e-3, t* by ~1e-3 and the neutralized gap by < 0.01)."""
    from vlalign.data.people import PeopleWorld
    from vlalign.evaluation.people import people_metrics, people_text_embeddings
    from vlalign.experiments.attribute.sweeps import summarize_sweep, sweep_head
    from vlalign.models.embeddings import image_embeddings
    from vlalign.models.loading import load_model

    out, m = quick_run
    config = AttributeExperimentConfig.quick(0)
    head_model = load_model(str(out / "dpo"))
    base = load_model("mini-people")
    test = PeopleWorld().sample("test", config.n_test, config.seed)
    emb, text = image_embeddings(base, test.images), people_text_embeddings(base)
    pretrained = people_metrics(emb, test, text, config.n_galleries, config.top_k)
    clean = summarize_sweep(pretrained, sweep_head(head_model, emb, text, test, config))
    assert clean["t_star"] == pytest.approx(m["t_star"], abs=1e-6)  # the saved head reproduces the run

    # 1e-5 (another CPU's rounding, generously) and 1e-3, where predictions do change: the figures move smoothly.
    for relative in (1e-5, 1e-3):
        g = torch.Generator().manual_seed(1)
        noisy = lambda x: x * (1 + relative * torch.randn(x.shape, generator=g))  # noqa: E731
        noisy_text = text.map(noisy)
        noisy_emb = noisy(emb)
        moved = summarize_sweep(people_metrics(noisy_emb, test, noisy_text, config.n_galleries, config.top_k),
                                sweep_head(head_model, noisy_emb, noisy_text, test, config))
        assert abs(moved["t_star"] - clean["t_star"]) <= 0.01, relative
        assert abs(moved["attribute_a_rate_at_t_star"] - clean["attribute_a_rate_at_t_star"]) <= 0.01, relative
        for key in ("original", "neutralized"):
            assert abs(moved["retrieval_parity_gap"][key] - clean["retrieval_parity_gap"][key]) <= 0.03, (relative, key)
        assert abs(moved["flipped_rate"] - clean["flipped_rate"]) <= 0.005, relative
        assert abs(moved["max_activity_drop"] - clean["max_activity_drop"]) <= 0.005, relative


def test_target_checks():
    summary = {"flipped_rate": 0.90, "max_activity_drop": 0.01,
               "retrieval_parity_gap": {"original": 0.8, "neutralized": 0.39}}
    checks = target_checks(summary)
    assert len(checks) == 3 and all(checks.values())
    summary.update(flipped_rate=0.87, max_activity_drop=0.021,
                   retrieval_parity_gap={"original": 0.8, "neutralized": 0.41})
    assert not any(target_checks(summary).values())
    summary["retrieval_parity_gap"]["neutralized"] = None  # the rates never crossed: no neutral model
    assert not target_checks(summary)["neutralized parity gap <= 0.5 x pretrained"]


def test_spread_hand_worked():
    s = spread([1.0, 2.0, 4.0])
    assert s["mean"] == pytest.approx(7 / 3) and s["min"] == 1.0 and s["max"] == 4.0 and s["n"] == 3
    # Sample standard deviation: squared deviations 16/9, 1/9, 25/9 over n - 1 = 2.
    assert s["std"] == pytest.approx((42 / 18) ** 0.5)
    one = spread([None, 0.5])
    assert one["mean"] == 0.5 and one["std"] is None and one["n"] == 1 and one["missing"] == 1
    assert spread([None])["mean"] is None


def test_aggregate_needs_the_same_methods_on_every_seed():
    run = {"methods": {"dpo": {}}}
    with pytest.raises(ValueError, match="ran methods"):
        aggregate_seeds({0: run, 1: {"methods": {"kto": {}}}})
    with pytest.raises(ValueError, match="no seeds"):
        aggregate_seeds({})


def test_config_errors():
    with pytest.raises(ValueError, match="multiple of"):
        AttributeExperimentConfig(n_test=1000)
    with pytest.raises(ValueError, match="methods"):
        AttributeExperimentConfig(methods=[])
    with pytest.raises(ValueError, match="neutral_half_width"):
        AttributeExperimentConfig(neutral_half_width=0.7)
    with pytest.raises(ValueError, match="weight_noise"):
        AttributeExperimentConfig(weight_noise=-1e-6)
    with pytest.raises(ValueError, match="regularize_on must be 'rest' or 'same', got 'both'"):
        AttributeExperimentConfig(regularize_on="both")


def test_regularize_on_reaches_the_regularization_set(monkeypatch, tmp_path, quick_run):
    """With ``regularize_on="same"`` the head is regularized on its preference images (the paper's choice), and
    the report says so."""
    from vlalign.experiments.attribute import run
    from vlalign.experiments.attribute.report import attribute_report
    from vlalign.models.loading import load_model

    seen = {}

    def stop(model, pref, reg, *args, **kwargs):
        seen["pref"], seen["reg"] = pref, reg
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "train_preference", stop)
    config = AttributeExperimentConfig.quick()
    config = dataclasses.replace(config, n_pref=64, n_reg=32, regularize_on="same")
    with pytest.raises(KeyboardInterrupt):
        run.attribute_experiment(load_model("mini-people"), config, tmp_path)
    assert len(seen["reg"]) == 64 and torch.equal(seen["reg"].images, seen["pref"].images)
    _, metrics = quick_run
    assert "8192 preference and 8192 other regularization images" in attribute_report(metrics, metrics["figures"], None)
    same = {**metrics, "config": {**metrics["config"], "regularize_on": "same"}}
    text = attribute_report(same, metrics["figures"], None)
    assert "the same images for regularization (the paper's choice)" in text and "`regularize_on=same`" in text


def test_loop_and_test_seeds_can_be_set_apart_from_the_data_seed():
    config = AttributeExperimentConfig(seed=2, loop_seed=1002, test_seed=0)
    _, loop = config.train_config("dpo")
    assert loop.seed == 1002 and config.test_draw == 0
    default = AttributeExperimentConfig(seed=2)
    assert default.train_config("dpo")[1].seed == 2 and default.test_draw == 2
    from vlalign.experiments.attribute.report import settings_beyond_command

    assert settings_beyond_command(dataclasses.asdict(config)) == (False, {"loop_seed": 1002, "test_seed": 0})


def test_train_config_carries_the_averaging_settings():
    _, loop = AttributeExperimentConfig(averaging="ema", ema_decay=0.998, seed=3).train_config("dpo")
    assert (loop.averaging, loop.ema_decay, loop.seed) == ("ema", 0.998, 3)
    with pytest.raises(ValueError, match="ema_decay"):
        AttributeExperimentConfig(ema_decay=1.0)


def test_seeds_flag(tmp_path, capsys):
    from vlalign.cli import main
    from vlalign.commands.experiment import parse_seeds

    assert parse_seeds("0,1,2") == [0, 1, 2]
    for bad in ("0,a", "1,1", "-1", "0,99999999999999999999"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)
    assert main(["experiment", "robust", "--out", str(tmp_path), "--seeds", "0,1"]) == 2
    assert "--seeds is supported by ['attribute'] only" in capsys.readouterr().err


def test_seeds_flag_reaches_the_multi_seed_run(tmp_path, monkeypatch):
    import vlalign.experiments.attribute.seeds as seeds_module
    from vlalign.cli import main

    calls = []
    monkeypatch.setattr(seeds_module, "run_attribute_seeds",
                        lambda out, seeds, quick: calls.append((out, seeds, quick)))
    assert main(["experiment", "attribute", "--out", str(tmp_path), "--seeds", "2,0,1", "--quick"]) == 0
    assert calls == [(tmp_path, [2, 0, 1], True)]


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


def test_seeds_aggregate_on_a_transformers_clip(tmp_path):
    model = _tiny_hf_clip()
    config = AttributeExperimentConfig(methods=["dpo", "kto"], n_pref=64, n_reg=32, n_test=64, n_galleries=2, top_k=5,
                                       t_points=5, steps=5, batch_size=16)
    agg = attribute_seeds(model, config, [3, 5], tmp_path)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["seeds"] == [3, 5] and set(on_disk["methods"]) == {"dpo", "kto"}
    runs = {s: json.loads((tmp_path / f"seed-{s}" / "metrics.json").read_text()) for s in (3, 5)}
    assert [runs[s]["config"]["seed"] for s in (3, 5)] == [3, 5]
    for method in ("dpo", "kto"):
        flipped = [runs[s]["methods"][method]["flipped_rate"] for s in (3, 5)]
        stats = agg["methods"][method]["figures"]["flipped_rate"]
        assert stats["mean"] == pytest.approx(sum(flipped) / 2)
        assert stats["std"] == pytest.approx(abs(flipped[0] - flipped[1]) / 2 ** 0.5)  # n - 1 = 1
        assert (stats["min"], stats["max"]) == (min(flipped), max(flipped))
        every = agg["methods"][method]["targets_met_every_seed"]
        for name, ok in every.items():
            assert ok == all(runs[s]["methods"][method]["targets_met"][name] for s in (3, 5))
    report = (tmp_path / "report.md").read_text()
    assert "## Targets on every seed" in report and "--seeds 3,5" in report
    for name in ("fig_seed_spread.png", "fig_seed_parity.png", "seed-3/report.md", "seed-5/report.md"):
        assert (tmp_path / name).is_file(), name
    # `vlalign report` rebuilds the same body from the folder (the seeds come back from JSON as strings).
    from vlalign.experiments.attribute.seeds import report_from_run

    assert report_from_run(tmp_path).strip() in report


def test_perturb_image_tower_scales_each_weight_by_a_small_random_factor():
    from vlalign.experiments.attribute.run import perturb_image_tower

    model = _tiny_hf_clip()
    noisy = perturb_image_tower(model, 1e-3, seed=0)
    pairs = zip(model.image_encoder.parameters(), noisy.image_encoder.parameters())
    ratios = torch.cat([(q / p).detach().flatten() - 1 for p, q in pairs if bool((p != 0).all())])
    assert ratios.numel() > 1000
    assert float(ratios.std()) == pytest.approx(1e-3, rel=0.1) and abs(float(ratios.mean())) < 1e-4
    for p, q in zip(model.text_encoder.parameters(), noisy.text_encoder.parameters()):
        assert torch.equal(p, q)  # the text tower and the original model are untouched
    again = perturb_image_tower(model, 1e-3, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(noisy.image_encoder.parameters(), again.image_encoder.parameters()))


def test_report_names_the_settings_the_command_would_not_run():
    import dataclasses
    import json

    from vlalign.experiments.attribute.report import settings_beyond_command

    quick = json.loads(json.dumps(dataclasses.asdict(AttributeExperimentConfig.quick(3))))  # as metrics.json holds it
    assert settings_beyond_command(quick) == (True, {})
    full = dataclasses.asdict(AttributeExperimentConfig(seed=3, weight_noise=1e-6))
    assert settings_beyond_command(full) == (False, {})  # weight noise is reported apart
    older = {**full, "n_pref": 2048, "n_reg": 2048}  # a run of the earlier default sizes
    assert settings_beyond_command(older) == (False, {"n_pref": 2048, "n_reg": 2048})
    # A quick folder written before the averaging fields existed is still the --quick run.
    before_fields = {k: v for k, v in quick.items() if k not in ("averaging", "ema_decay")}
    assert settings_beyond_command(before_fields) == (True, {})
    # ... and so is one recorded with another default (β, λ) for a method it did not train (IPO, before 2026-12-08).
    other_ipo = {**before_fields, "method_params": {**quick["method_params"], "ipo": [0.02, 10.0]}}
    assert settings_beyond_command(other_ipo) == (True, {})
