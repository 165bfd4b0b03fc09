"""The contrastive preference-optimization trainer, heads, Σ^t control and the Table 1 baselines."""

import math

import pytest
import torch

from vlalign.data.preference import PreferenceSet, RegularizationSet, typographic_preference_data
from vlalign.evaluation.control import is_monotonic, monotone_violation, parse_range, sweep_head_power
from vlalign.evaluation.zero_shot import zero_shot_evaluate
from vlalign.models.heads import HeadedCLIP, LinearHead
from vlalign.models.loading import load_model
from vlalign.models.prompt_prefix import DefensePrefixCLIP
from vlalign.pipelines.preference import save_aligned_model
from vlalign.training.methods.baselines import orthogonality_penalty, train_defense_prefix
from vlalign.training.methods.preference import PreferenceConfig, train_preference
from vlalign.training.paint import interpolate_state, paint
from vlalign.training.train_config import TrainConfig

from cli_helpers import interrupt_at


@pytest.fixture(scope="module")
def data():
    return typographic_preference_data(64, 64, seed=123)


def effective(config):
    return config.effective_beta, config.effective_lam


def test_config_defaults_and_validation():
    import dataclasses

    assert effective(PreferenceConfig(method="dpo")) == (1.0, 1.0)
    assert effective(PreferenceConfig(method="ipo")) == (0.01, 0.01)
    assert effective(PreferenceConfig(method="kto")) == (1.5, 0.01)
    # Method defaults are resolved, not written into the fields: a copy with another method gets that method's.
    assert effective(dataclasses.replace(PreferenceConfig(method="dpo"), method="ipo")) == (0.01, 0.01)
    assert effective(dataclasses.replace(PreferenceConfig(method="dpo", beta=0.3), method="ipo")) == (0.3, 0.01)
    with pytest.raises(ValueError, match="method"):
        PreferenceConfig(method="rlhf")
    with pytest.raises(ValueError, match=r"beta must be a finite number in \(0, inf\), got -1.0"):
        PreferenceConfig(beta=-1.0)
    with pytest.raises(ValueError, match=r"lam must be a finite number in \[0, inf\), got nan"):
        PreferenceConfig(lam=float("nan"))


def test_dpo_starts_at_log2_and_improves_the_preference_margin(mini_model, data):
    pref, reg = data
    cfg = PreferenceConfig(method="dpo", trainable="head", lam=0.0)
    result = train_preference(mini_model, pref, reg, cfg, TrainConfig(steps=40, batch_size=32), progress=False)
    assert result.history[0]["loss_pref"] == pytest.approx(math.log(2), abs=1e-5)
    assert result.history[-1]["policy_ratio"] > 0.5
    assert isinstance(result.model, HeadedCLIP)


def test_full_mode_trains_a_copy_and_leaves_the_input_model_untouched(tiny_mini_clip):
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    prompts = ("a photo of a star", "a photo of a heart", "a photo of a moon")
    pref = PreferenceSet(images, torch.zeros(16, dtype=torch.long), torch.ones(16, dtype=torch.long), prompts)
    reg = RegularizationSet(images, prompts)
    before = {k: v.clone() for k, v in tiny_mini_clip.state_dict().items()}
    cfg = PreferenceConfig(method="ipo", trainable="full")
    result = train_preference(tiny_mini_clip, pref, reg, cfg, TrainConfig(steps=3, batch_size=8, lr=1e-3,
                                                                           averaging="ema"), progress=False)
    assert all(torch.equal(before[k], v) for k, v in tiny_mini_clip.state_dict().items())
    after = result.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("visual."))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("text."))  # text tower frozen


def test_lora_mode_merges_adapters(tiny_mini_clip):
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    prompts = ("a photo of a star", "a photo of a heart")
    pref = PreferenceSet(images, torch.zeros(8, dtype=torch.long), torch.ones(8, dtype=torch.long), prompts)
    cfg = PreferenceConfig(method="dpo", trainable="lora", lora_rank=2)
    model = train_preference(tiny_mini_clip, pref, None, cfg, TrainConfig(steps=3, batch_size=4, lr=1e-2),
                             progress=False).model
    assert not any("lora_" in k for k in model.state_dict())
    assert set(model.state_dict()) == set(tiny_mini_clip.state_dict())
    x = images.float() / 255
    assert not torch.allclose(model.encode_image(x), tiny_mini_clip.encode_image(x))


def _lora_trajectory(monkeypatch):
    """Record, at the averager's start and after every step, each LoRA layer's merged weight W₀ + s·B A computed
    by hand from its factors (independently of the library's effective_weights)."""
    from peft.tuners.lora import LoraLayer

    from vlalign.training import loop

    snapshots = []
    real = loop.WeightAverager

    def record(method):
        tower = method.trainable_module()
        layers = [(name, layer) for name, layer in tower.named_modules() if isinstance(layer, LoraLayer)]
        snapshots.append({f"{name}.weight": (layer.get_base_layer().weight + layer.scaling["default"]
                                             * layer.lora_B["default"].weight @ layer.lora_A["default"].weight)
                          .detach().double() for name, layer in layers})

    class Recording(real):
        def __init__(self, weights, *args, **kwargs):
            record(recording["method"])
            super().__init__(weights, *args, **kwargs)

        def update(self, weights):
            record(recording["method"])
            super().update(weights)

    recording: dict = {}
    monkeypatch.setattr(loop, "WeightAverager", Recording)
    return snapshots, recording


@pytest.mark.parametrize("kind", ["bma", "ema"])
def test_lora_weight_average_is_the_average_of_merged_weights(tiny_mini_clip, monkeypatch, kind):
    """With LoRA, BMA/EMA average W₀ + s·B A over the trajectory (contrastive-PO eq. 37), not the factors: the
    final merged weights equal the explicit weighted ensemble of the merged weights of every step."""
    from vlalign.training.averaging import bma_weight
    from vlalign.training.methods import preference

    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    prompts = ("a photo of a star", "a photo of a heart")
    pref = PreferenceSet(images, torch.zeros(8, dtype=torch.long), torch.ones(8, dtype=torch.long), prompts)
    snapshots, recording = _lora_trajectory(monkeypatch)
    real_prepare = preference.ContrastivePreference.prepare

    def prepare(self, device):
        recording["method"] = self
        real_prepare(self, device)

    monkeypatch.setattr(preference.ContrastivePreference, "prepare", prepare)
    steps, decay = 6, 0.5
    cfg = PreferenceConfig(method="dpo", trainable="lora", lora_rank=2)
    model = train_preference(tiny_mini_clip, pref, None, cfg, TrainConfig(steps=steps, batch_size=4, lr=5e-2,
                             averaging=kind, ema_decay=decay), progress=False).model
    assert len(snapshots) == steps + 1
    if kind == "bma":
        weights = [bma_weight(t, steps, 0.7) for t in range(steps + 1)]
    else:
        weights = [decay ** steps] + [(1 - decay) * decay ** (steps - t) for t in range(1, steps + 1)]
    total = sum(weights)
    merged = dict(model.image_encoder.named_parameters())
    last_moved = 0.0
    for name in snapshots[0]:
        explicit = sum(w * snap[name] for w, snap in zip(weights, snapshots)) / total
        torch.testing.assert_close(merged[name].double(), explicit, atol=1e-6, rtol=0)
        last_moved = max(last_moved, float((snapshots[-1][name] - explicit).abs().max()))
    assert last_moved > 1e-3  # the average is not just the last weights


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(mini_model, data, tmp_path, monkeypatch):
    from vlalign.training.methods.preference import ContrastivePreference

    pref, reg = data
    cfg = PreferenceConfig(method="kto", trainable="head")
    loop = TrainConfig(steps=6, batch_size=16, checkpoint_every=3, averaging="bma")
    full = train_preference(mini_model, pref, reg, cfg, loop, tmp_path / "a", progress=False).model
    # A run interrupted in step 4 (after its step-3 checkpoint), then resumed, must finish identically.
    restore = interrupt_at(monkeypatch, ContrastivePreference, 4)
    with pytest.raises(KeyboardInterrupt, match="interrupted at step 4; the last checkpoint \\(step 3\\)"):
        train_preference(mini_model, pref, reg, cfg, loop, tmp_path / "b", progress=False)
    restore()
    resumed = train_preference(mini_model, pref, reg, cfg, loop, tmp_path / "b", progress=False).model
    assert torch.equal(full.head.weight, resumed.head.weight)
    assert (tmp_path / "a" / "metrics.csv").read_text().count("\n") >= 2


def test_head_power_zero_is_the_pretrained_model_and_one_the_trained_head(mini_model, world):
    torch.manual_seed(0)
    weight = torch.eye(mini_model.embed_dim) + 0.2 * torch.randn(mini_model.embed_dim, mini_model.embed_dim)
    model = HeadedCLIP(mini_model, LinearHead(mini_model.embed_dim, weight))
    images = world.sample("typographic", 36, 9)
    pretrained = zero_shot_evaluate(mini_model, images).predictions
    sweep = sweep_head_power(model, {"typo": images}, [0.0, 1.0])
    assert sweep["typo"][0] == pytest.approx(float((pretrained == images.labels).float().mean()))
    assert sweep["typo"][1] == pytest.approx(zero_shot_evaluate(model, images).accuracy)
    assert torch.allclose(model.head.power(1.0), weight, atol=1e-5)
    u, _, vh = torch.linalg.svd(weight.double())
    assert torch.allclose(model.head.power(0.0).double(), u @ vh, atol=1e-5)


def test_parse_range_and_monotonic():
    assert parse_range("-1:1:0.5") == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert parse_range("0,0.5,1") == [0.0, 0.5, 1.0]
    assert len(parse_range("0:99.9:0.1")) == 1000
    for bad, message in [("nan", "finite"), ("0:inf:1", "finite"), ("-inf,0", "finite"), ("101", r"\[-100, 100\]"),
                         ("0:100:0.1", "gives 1,001 values; at most 1000"), ("0:1:1e-300", "at most 1000"),
                         (",".join(["0"] * 1001), "1001 values; at most 1000"), ("0:1", "START:STOP:STEP")]:
        with pytest.raises(ValueError, match=message):
            parse_range(bad, "--t")
    with pytest.raises(ValueError, match="START:STOP:STEP"):
        parse_range("1:0:0.5")
    assert is_monotonic([0.1, 0.2, 0.2, 0.5]) and is_monotonic([3, 2, 1]) and not is_monotonic([1, 3, 2])
    # The largest step against the trend, worked by hand: falling 0.76 → 0.70 with one rise of 0.02 (against a
    # rising trend the worst step would be the fall of 0.04, so falling is the nearer trend).
    assert monotone_violation([0.76, 0.72, 0.74, 0.70]) == pytest.approx(0.02)
    assert monotone_violation([0.1, 0.2, 0.2, 0.5]) == 0.0 and monotone_violation([0.5]) == 0.0
    assert is_monotonic([0.76, 0.72, 0.74, 0.70], 0.021) and not is_monotonic([0.76, 0.72, 0.74, 0.70], 0.019)
    assert monotone_violation([0.5, float("nan"), 0.3]) == float("inf") and not is_monotonic([0.5, float("nan")], 1.0)
    with pytest.raises(ValueError, match="tolerance"):
        is_monotonic([0.5], -0.1)


def test_save_and_load_aligned_models(mini_model, tiny_mini_clip, data, tmp_path):
    pref, reg = data
    cfg = PreferenceConfig(method="dpo", trainable="head")
    result = train_preference(mini_model, pref, reg, cfg, TrainConfig(steps=3, batch_size=8), progress=False)
    save_aligned_model(result, tmp_path / "head", "mini")
    loaded = load_model(tmp_path / "head")
    assert torch.equal(loaded.head.weight, result.model.head.weight)
    x = pref.images[:4].float() / 255
    assert torch.allclose(loaded.encode_image(x), result.model.encode_image(x), atol=1e-6)


def test_paint_endpoints_and_interpolation():
    a = {"w": torch.zeros(3), "n": torch.tensor([1])}
    b = {"w": torch.ones(3), "n": torch.tensor([2])}
    assert torch.equal(interpolate_state(a, b, 0.25)["w"], torch.full((3,), 0.25))
    assert torch.equal(interpolate_state(a, b, 0.25)["n"], torch.tensor([2]))


def test_paint_picks_the_validation_best_alpha(tiny_mini_clip):
    import copy

    finetuned = copy.deepcopy(tiny_mini_clip)
    with torch.no_grad():
        for p in finetuned.visual.parameters():
            p.add_(1.0)
    target = dict(tiny_mini_clip.visual.named_parameters())["head.weight"][0, 0].item() + 0.3

    def validate(model):  # best when the interpolated weight is closest to start + 0.3, i.e. alpha = 0.3
        return -abs(dict(model.visual.named_parameters())["head.weight"][0, 0].item() - target)

    result = paint(tiny_mini_clip, finetuned, [0.0, 0.1, 0.3, 0.6, 1.0], validate)
    assert result.alpha == pytest.approx(0.3)


def test_orthogonality_penalty():
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    assert float(orthogonality_penalty(q)) == pytest.approx(0.0, abs=1e-10)
    assert float(orthogonality_penalty(2 * torch.eye(3, dtype=torch.float64))) == pytest.approx(math.sqrt(27))


def test_defense_prefix_inserts_a_token_before_the_class_name(mini_model):
    red = mini_model.text.token_embedding.weight[mini_model.tokenizer.index["red"]].detach()
    dp = DefensePrefixCLIP(mini_model, red)
    expected = mini_model.encode_text(["a photo of a red star", "a photo of a moon"][:1] + ["a photo of a red moon"])
    got = dp.encode_text(["a photo of a star", "a photo of a moon"])
    assert torch.allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="MiniCLIP"):
        DefensePrefixCLIP(HeadedCLIP(mini_model))


def test_defense_prefix_training_moves_typographic_predictions(mini_model, data):
    pref, reg = data
    dp = train_defense_prefix(mini_model, pref, reg, TrainConfig(steps=30, batch_size=32))
    assert not dp.prefix.requires_grad
    images = pref.images[:32].float() / 255
    prompts = list(pref.prompts)
    scale = float(mini_model.logit_scale)
    logits = scale * dp.encode_image(images) @ dp.encode_text(prompts).t()
    base = scale * mini_model.encode_image(images) @ mini_model.encode_text(prompts).t()
    # the learned prefix raises the true class's share on the training typographic images
    gain = (logits.softmax(1).gather(1, pref.chosen[:32, None]) - base.softmax(1).gather(1, pref.chosen[:32, None])).mean()
    assert float(gain) > 0


def test_cli_train_control_and_kl_eval(tmp_path):
    import json

    from vlalign.cli import main

    config = tmp_path / "dpo_head.yaml"
    config.write_text("method: dpo\noptions: {trainable: head}\ntrain: {steps: 4, batch_size: 16}\n"
                      "data: {n_pref: 48, n_reg: 48}\neval: {images: 24}\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"clean", "typographic", "clean_heldout", "typographic_heldout", "kl_clean"} <= set(metrics)
    assert main(["control", "--run", str(tmp_path / "run"), "--t", "-1:1:1", "--n", "24"]) == 0
    control = json.loads((tmp_path / "run" / "control" / "control.json").read_text())
    assert control["t"] == [-1.0, 0.0, 1.0] and len(control["written_label_rate"]) == 3
    assert (tmp_path / "run" / "control" / "frontier.png").is_file()
    assert main(["eval", "--model", str(tmp_path / "run"), "--reference", "mini", "--n", "24",
                 "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["kl_to_reference"] >= 0
    config.write_text("method: dpo\ntrain: {step: 4}\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "bad")]) == 2


def test_a_preference_jsonl_with_a_kl_term_needs_regularization_images(tmp_path):
    from vlalign.config import ConfigError, config_from_dict
    from vlalign.pipelines.preference import PreferenceRun

    with pytest.raises(ConfigError, match="data.path is a preference JSONL and the KL weight lam = 1.0 > 0"):
        config_from_dict(PreferenceRun, {"method": "dpo", "data": {"path": "prefs.jsonl"}})
    run = config_from_dict(PreferenceRun, {"method": "dpo", "options": {"lam": 0}, "data": {"path": "prefs.jsonl"}})
    assert run.options.effective_lam == 0
    # The top-level method fills in the options' method, and with it that method's defaults.
    assert config_from_dict(PreferenceRun, {"method": "ipo"}).options.effective_beta == 0.01


def test_preference_prompts_with_unknown_words_are_refused(mini_model):
    from vlalign.models.vocabulary import UnknownWordsError

    images = torch.zeros(4, 3, 64, 64, dtype=torch.uint8)
    pref = PreferenceSet(images, torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long),
                         ("a photo of a dog", "a photo of a cat"))
    with pytest.raises(UnknownWordsError, match=r"preference prompts: 2 word\(s\) unknown.*'cat', 'dog'|'dog', 'cat'"):
        train_preference(mini_model, pref, None, PreferenceConfig(trainable="head"), TrainConfig(steps=1, batch_size=4),
                         progress=False)


@pytest.mark.parametrize("values, match", [
    ({"method": "dpo", "data": {"n_reg": 0}}, "data.n_reg is 0 but the KL weight options.lam = 1.0 > 0"),
    ({"method": "ce", "data": {"n_reg": 0}}, "data.n_reg is 0 but the ce baseline trains on labelled clean images"),
])
def test_no_regularization_images_with_a_kl_term_or_ce_is_a_config_error(values, match):
    from vlalign.config import ConfigError, config_from_dict
    from vlalign.pipelines.preference import PreferenceRun

    with pytest.raises(ConfigError, match=match):
        config_from_dict(PreferenceRun, values)
    assert config_from_dict(PreferenceRun, {"method": "dpo", "options": {"lam": 0}, "data": {"n_reg": 0}})


def test_a_finished_preference_run_is_evaluated_again_with_new_eval_settings_and_keeps_its_averages(tmp_path,
                                                                                                    capsys):
    import json

    from vlalign.cli import main

    config = tmp_path / "dpo_head.yaml"
    text = ("method: dpo\noptions: {trainable: head}\ndata: {n_pref: 32, n_reg: 32}\n"
            "train: {steps: 2, batch_size: 16, averaging: bma, extra_averaging: [ema]}\n")
    config.write_text(text + "eval: {images: 16}\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["alternates"]) == {"ema"} and "kl_clean" in metrics["alternates"]["ema"]
    assert (out / "ema" / "model.safetensors").is_file() or (out / "ema" / "head.safetensors").is_file()
    state = (out / "state" / "train_state.safetensors").read_bytes()
    config.write_text(text + "eval: {images: 8, seed: 77}\n")
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--out", str(out)]) == 0
    assert "evaluated it again with the config's eval settings, without training" in capsys.readouterr().err
    assert (out / "state" / "train_state.safetensors").read_bytes() == state  # not trained again
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["eval"] == {"images": 8, "seed": 77}
    assert json.loads((out / "metrics.json").read_text()) != metrics
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--out", str(out)]) == 0
    assert "this run already finished" in capsys.readouterr().out
    # A finished run whose saved model was truncated is written again from its training state, not trained again.
    model_file = next(out.glob("*.safetensors"))
    intact = model_file.read_bytes()
    model_file.write_bytes(intact[:1000])
    assert main(["train", "--config", str(config), "--out", str(out)]) == 0
    assert model_file.read_bytes() == intact
    assert (out / "state" / "train_state.safetensors").read_bytes() == state
