"""The AdvLoRA training method against the Method contract: terms of forward, caption draws, frozen caption
embeddings, a few manual optimizer steps reduce the loss, and finish() returns a plain merged model."""

from __future__ import annotations

import math

import pytest
import torch

from vlalign.attacks.objectives import RetrievalObjective
from vlalign.data.retrieval_set import collate_retrieval
from vlalign.data.retrieval_world import RetrievalWorld, retrieval_vocabulary
from vlalign.data.scene_captions import longest_caption_words
from vlalign.losses.contrastive import clip_contrastive_loss
from vlalign.models.mini_clip import MiniCLIP, MiniCLIPConfig
from vlalign.training.method import Method
from vlalign.training.methods.advlora import AdvLoRAConfig, AdvLoRAMethod, sample_captions

from cli_helpers import interrupt_at


@pytest.fixture(scope="module")
def data():
    return RetrievalWorld().sample("train", 16, seed=0)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MiniCLIP(MiniCLIPConfig(image_size=32, stem_channels=(8, 16, 32), vision_width=32, vision_layers=1,
                                   vision_heads=2, text_width=32, text_layers=1, text_heads=2, embed_dim=16,
                                   vocab=retrieval_vocabulary(), max_text_length=longest_caption_words() + 2)).eval()


def batch_of(data, rows, step: int = 0, seed: int = 0):
    return {"train": collate_retrieval([data[i] for i in rows]), "step": step, "seed": seed}


def method(model, data, **kwargs) -> AdvLoRAMethod:
    m = AdvLoRAMethod(model, data, AdvLoRAConfig(rank=2, **kwargs))
    m.prepare(torch.device("cpu"))
    return m.train()


MODES = {
    "full_clean": dict(trainable="full", adversarial=False),
    "full_adversarial": dict(trainable="full"),
    "lora_clean": dict(trainable="lora", adversarial=False),
    "lora_adversarial": dict(trainable="lora"),
    "advlora": dict(),
    "advlora_no_cluster_init": dict(cluster_init=False, alignment_target="init"),
    "advlora_no_alignment": dict(alignment_weight=0.0),
    "advlora_no_adaptive_alpha": dict(adaptive_alpha=False),
}


@pytest.mark.parametrize("mode", MODES)
def test_forward_returns_finite_documented_terms(model, data, mode):
    m = method(model, data, **MODES[mode])
    assert isinstance(m, Method) and set(m.streams()) == {"train"}
    out = m(batch_of(data, [3, 0, 7, 5]))
    kwargs = AdvLoRAConfig(rank=2, **MODES[mode])
    expected = {"loss", "adversarial" if kwargs.adversarial else "clean"}
    if kwargs.alignment_weight:
        expected.add("alignment")
    if kwargs.adaptive_alpha:
        expected.add("alpha_mean")
    assert set(out) == expected
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    total = out.get("adversarial", out.get("clean")) + kwargs.alignment_weight * out.get("alignment", 0.0)
    assert float(out["loss"].detach()) == pytest.approx(float(total.detach()), rel=1e-6)
    trainable = [n for n, p in m.trainable_module().named_parameters() if p.requires_grad]
    if mode.startswith("full"):
        assert all(n.startswith("visual.") for n in trainable)
    else:
        assert all("lora_" in n for n in trainable)


def test_clean_loss_is_the_symmetric_infonce_of_the_drawn_captions(model, data):
    m = method(model, data, trainable="lora", adversarial=False)
    rows = [2, 9, 4]
    batch = batch_of(data, rows, step=5, seed=3)
    choice = sample_captions(3, 5, batch["train"]["index"], [5, 5, 5])
    texts = [data.captions[r][int(k)] for r, k in zip(rows, choice)]
    with torch.no_grad():
        image, text = model.encode_image(data.pixels(torch.tensor(rows))), model.encode_text(texts)
        expected = clip_contrastive_loss(model.logit_scale * image @ text.t())
        got = m(batch)["clean"]
    assert float(got) == pytest.approx(float(expected), abs=1e-5)  # the LoRA (B = 0) leaves the model as it was


def test_caption_draws_depend_on_seed_step_and_index_only():
    index = torch.tensor([4, 1, 9, 2, 7, 3])
    a = sample_captions(0, 7, index, [5] * 6)
    # The same image draws the same caption at the same step whichever batch or position it is in.
    assert sample_captions(0, 7, index.flip(0), [5] * 6).flip(0).tolist() == a.tolist()
    assert sample_captions(0, 7, index[2:3], [5])[0] == a[2]
    others = [sample_captions(s, k, index, [5] * 6) for s, k in ((1, 7), (0, 8))]
    assert all(not torch.equal(a, o) for o in others)
    assert set(sample_captions(0, 0, torch.arange(200), [5] * 200).tolist()) == {0, 1, 2, 3, 4}
    assert sample_captions(0, 0, torch.arange(50), [1] * 50).eq(0).all()


def test_frozen_caption_embeddings_are_computed_once(model, data):
    m = method(model, data, trainable="lora")
    texts = [t for group in data.captions for t in group]
    with torch.no_grad():
        torch.testing.assert_close(m.caption_embeddings, model.encode_text(texts), atol=1e-6, rtol=0)
    fresh = AdvLoRAMethod(model, data, AdvLoRAConfig(rank=2))
    with pytest.raises(RuntimeError, match="call prepare"):
        fresh(batch_of(data, [0, 1]))
    text_lora = method(model, data, trainable="lora", text_targets=None)
    assert text_lora.caption_embeddings is None and text_lora.text_trainable


def test_the_training_attack_raises_the_image_to_text_loss(model, data):
    """What RetrievalObjective maximizes: CE of each image against the batch's captions, its own as label."""
    m = method(model, data, trainable="full")
    pixels = data.pixels(torch.arange(8))
    with torch.no_grad():
        text = model.encode_text([c[0] for c in data.captions[:8]])
    objective = RetrievalObjective(m.model, None, torch.arange(8), text_embeddings=text)
    adversarial = m.attack(objective, pixels, sample_seeds=list(range(8))).adversarial
    assert float((adversarial - pixels).abs().max()) <= m.eps + 1e-6
    with torch.no_grad():
        clean_loss, attacked_loss = objective(pixels).loss, objective(adversarial).loss
        manual = torch.nn.functional.cross_entropy(m.model.logit_scale * m.model.encode_image(pixels) @ text.t(),
                                                   torch.arange(8), reduction="none")
    torch.testing.assert_close(clean_loss, manual, atol=1e-5, rtol=0)
    assert float(attacked_loss.mean()) > float(clean_loss.mean())
    assert m.training and all(p.requires_grad for p in m.model.image_parameters())  # restored after the attack


@pytest.mark.parametrize("mode", ["full_adversarial", "lora_clean", "advlora"])
def test_a_few_optimizer_steps_reduce_the_loss(model, data, mode):
    torch.manual_seed(0)
    m = method(model, data, **MODES[mode], **({"eps": "8/255"} if mode != "lora_clean" else {}))
    batch = batch_of(data, list(range(16)))
    params = [p for p in m.trainable_module().parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=3e-3 if mode.startswith("full") else 2e-2)
    losses = []
    for _ in range(8):
        loss = m(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.9 * losses[0], losses


def test_finish_merges_into_a_plain_model_and_keeps_the_peft_adapter(model, data, tmp_path):
    from vlalign.models.adapters import load_peft_adapter

    m = method(model, data)
    batch = batch_of(data, list(range(8)))
    optimizer = torch.optim.Adam([p for p in m.model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss = m(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert m.alphas() and any(abs(a - 1.0) > 1e-6 for a in m.alphas().values())
    pixels = data.pixels(torch.arange(4))
    with torch.no_grad():
        adapted = m.model.encode_image(pixels)
    finished = m.finish()
    assert isinstance(finished, MiniCLIP) and not finished.training
    assert not any("lora_" in k for k in finished.state_dict())
    assert not any(p.requires_grad for p in finished.parameters())
    with torch.no_grad():
        assert float((finished.encode_image(pixels) - adapted).abs().max()) <= 1e-5
    m.save_peft_adapter(tmp_path)
    with torch.no_grad():
        restored = load_peft_adapter(model, tmp_path).encode_image(pixels)
    assert float((restored - adapted).abs().max()) <= 1e-5


@pytest.mark.parametrize("kwargs, match", [
    (dict(trainable="lora", cluster_init=True), "AdvLoRA parts"),
    (dict(trainable="full", alignment_weight=0.5), "AdvLoRA parts"),
    (dict(rank=0), "rank"), (dict(eps="3/0"), "eps"), (dict(eps="2"), "eps"), (dict(attack_steps=0), "attack_steps"),
    (dict(alignment_weight=-1.0), "alignment_weight"), (dict(alpha_init=0.0), "alpha_init"),
    (dict(clean_weight=-0.1), "clean_weight"), (dict(trainable="lora", train_text=True), "train_text"),
    (dict(trainable="lora", full_parameters=["stem.0."]), "full_parameters"),
    (dict(trainable="full", full_parameters=[]), "full_parameters"),
    (dict(rank_pattern={"stem.0": 0}), r"rank_pattern\[stem.0\]"),
    (dict(trainable="full", rank_pattern={"stem.0": 4}), "no LoRA"),
])
def test_config_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdvLoRAConfig(**kwargs)


def test_full_parameters_trains_only_the_named_part_of_the_image_tower(model, data):
    m = method(model, data, trainable="full", full_parameters=["stem.0.", "stem.1."])
    trainable = {name for name, p in m.model.named_parameters() if p.requires_grad}
    tower = m.model.image_encoder
    expected = {name for name, p in m.model.named_parameters()
                if any(p is q for n, q in tower.named_parameters() if n.startswith(("stem.0.", "stem.1.")))}
    assert trainable == expected and len(expected) == 4  # conv weight and bias, GroupNorm weight and bias
    before = {name: p.detach().clone() for name, p in m.model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in m.model.parameters() if p.requires_grad], lr=0.1)
    m(batch_of(data, [0, 1, 2, 3]))["loss"].backward()
    optimizer.step()
    moved = {name for name, p in m.model.named_parameters() if not torch.equal(p, before[name])}
    assert moved and moved <= expected
    with pytest.raises(ValueError, match=r"\['stem\.99\.'\] match no image-tower parameter"):
        AdvLoRAMethod(model, data, AdvLoRAConfig(trainable="full", full_parameters=["stem.0.", "stem.99."]))


def test_full_parameters_prefixes_end_on_a_dot_boundary_and_leave_train_text_alone(model, data):
    from vlalign.training.methods.advlora import train_only, under_prefix

    assert [under_prefix("stem.12.weight", p) for p in ("stem.1", "stem.1.", "stem.12", "stem")] == [
        False, False, True, True]
    assert under_prefix("pos", "pos") and not under_prefix("position", "pos")
    tower = MiniCLIP(model.config).image_encoder  # a fresh copy: every parameter trainable
    kept = train_only(tower, ["stem.0"])
    assert kept == [name for name, _ in tower.named_parameters() if name.startswith("stem.0.")]
    m = method(model, data, trainable="full", full_parameters=["stem.0"], train_text=True)
    assert all(p.requires_grad for p in m.model.text_parameters())
    image = {name for name, p in m.model.image_encoder.named_parameters() if p.requires_grad}
    assert image == {"stem.0.weight", "stem.0.bias"}


def test_config_loads_from_yaml_with_checks(tmp_path):
    from vlalign.config import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text("trainable: lora\nrank: 4\neps: 4/255\nadversarial: true\n")
    config = load_config(path, AdvLoRAConfig)
    assert (config.rank, config.cluster_init, config.alignment_weight) == (4, False, 0.0)
    path.write_text("trainable: full\nfull_parameters: [stem.0., stem.1.]\n")
    assert load_config(path, AdvLoRAConfig).full_parameters == ["stem.0.", "stem.1."]
    path.write_text("trainable: lora\nrank_pattern: {stem.0: 16}\n")
    assert load_config(path, AdvLoRAConfig).adapter_spec().rank_pattern == {"stem.0": 16}
    path.write_text("trainable: lora\nrank_pattern: {stem.0: 2.5}\n")
    with pytest.raises(ConfigError, match="rank_pattern.stem.0: expected an integer"):
        load_config(path, AdvLoRAConfig)
    path.write_text("trainable: lora\nranks: 4\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(path, AdvLoRAConfig)


def test_trains_through_the_loop_and_resumes_exactly(model, data, tmp_path, monkeypatch):
    """fit() drives the method; a run interrupted after its step-2 checkpoint ends where an uninterrupted one ends."""
    from vlalign.training.loop import fit
    from vlalign.training.train_config import TrainConfig

    config = AdvLoRAConfig(rank=2, eps="4/255", attack_steps=2)
    train = TrainConfig(steps=4, batch_size=4, lr=1e-2, checkpoint_every=2, log_every=1)
    straight = fit(AdvLoRAMethod(model, data, config), train, tmp_path / "straight", progress=False).model
    assert isinstance(straight, MiniCLIP) and not any("lora_" in k for k in straight.state_dict())
    restore = interrupt_at(monkeypatch, AdvLoRAMethod, 3)
    with pytest.raises(KeyboardInterrupt):
        fit(AdvLoRAMethod(model, data, config), train, tmp_path / "resumed", progress=False)
    restore()
    resumed = fit(AdvLoRAMethod(model, data, config), train, tmp_path / "resumed", progress=False).model
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], model.state_dict()[k]) for k in a)  # it did train
    logged = (tmp_path / "straight" / "metrics.csv").read_text().splitlines()[0]
    assert {"adversarial", "alignment", "alpha_mean"} <= set(logged.split(","))


def _outputs_after_decay_alone(m: AdvLoRAMethod, groups: list[dict], images: torch.Tensor) -> torch.Tensor:
    """The image embeddings after ten AdamW steps on zero gradients: weight decay alone."""
    optimizer = torch.optim.AdamW(groups, lr=0.1)
    for param in m.trainable_module().parameters():
        param.grad = torch.zeros_like(param) if param.requires_grad else None
    for _ in range(10):
        optimizer.step()
    with torch.no_grad():
        return m.model.encode_image(images)


@pytest.mark.parametrize("mode", ["advlora", "lora_adversarial", "advlora_no_cluster_init"])
def test_weight_decay_pulls_towards_the_pretrained_weights(model, data, mode):
    """Weight decay must pull towards the pre-trained weights. A zero-initialized LoRA product decays towards W₀
    itself, so plain LoRA keeps decay on its factors; decaying the clustering init's factors would pull the model
    towards W₀ − M C, so they are exempt. Either way decay alone leaves the pre-trained model's outputs."""
    m = method(model, data, **MODES[mode])
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = m.model.encode_image(images)
    groups = m.param_groups(0.5)
    trainable = [p for p in m.trainable_module().parameters() if p.requires_grad]
    grouped = [id(p) for group in groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in trainable)  # every trainable parameter, once
    factors = {id(p) for name, p in m.model.named_parameters()
               if ("lora_A" in name or "lora_B" in name) and p.dim() > 1}
    decayed = {id(p) for group in groups if group["weight_decay"] for p in group["params"]}
    assert factors.isdisjoint(decayed) if mode == "advlora" else factors <= decayed
    torch.testing.assert_close(_outputs_after_decay_alone(m, groups, images), before, atol=1e-5, rtol=0)
    if mode == "advlora":  # the generic groups would decay the factors, and the model with them
        m = method(model, data, **MODES[mode])
        moved = _outputs_after_decay_alone(m, Method.param_groups(m, 0.5), images) - before
        assert float(moved.abs().max()) > 1e-3


def test_alpha_gets_its_own_learning_rate_in_the_loop(model, data):
    """With ``alpha_lr_scale`` the scales α form their own undecayed group, and the loop's optimizer trains that
    group, and only it, at the scaled rate (the schedule's warm-up multiplies every group alike)."""
    from vlalign.training.loop import _optimizer, _scheduler
    from vlalign.training.train_config import TrainConfig

    m = method(model, data, alpha_lr_scale=0.1)
    alphas = [p for name, p in m.model.named_parameters() if name.endswith(".alpha")]
    assert alphas
    groups = m.param_groups(0.01)
    (own,) = [g for g in groups if "lr_scale" in g]
    assert [id(p) for p in own["params"]] == [id(p) for p in alphas] and own["weight_decay"] == 0.0
    train = TrainConfig(steps=10, lr=4e-2, warmup_fraction=0.0, optimizer="adamw", betas=(0.9, 0.98))
    optimizer = _optimizer(train, groups)
    rates = sorted(g["lr"] for g in optimizer.param_groups)
    assert rates[0] == pytest.approx(4e-3) and rates[1:] == [pytest.approx(4e-2)] * (len(rates) - 1)
    assert "lr_scale" in own  # the method's groups are not changed by building the optimizer
    scheduler = _scheduler(optimizer, train)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    ratios = {round(g["lr"] / g["initial_lr"], 9) for g in optimizer.param_groups}
    assert len(ratios) == 1  # one schedule for every group
    with pytest.raises(ValueError, match="alpha_lr_scale"):
        AdvLoRAConfig(alpha_lr_scale=0.0)
    assert all("lr_scale" not in g for g in method(model, data).param_groups(0.01))  # the default: no own group


def test_a_deep_copy_finished_first_leaves_the_original_whole(model, data):
    """A deep copy of a parametrized module shares its generated class; folding α on the copy must not delete the
    original's ``weight`` property (it did: the original's finish() then failed with an AttributeError)."""
    import copy

    m = method(model, data)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = m.model.encode_image(images)
    replica = copy.deepcopy(m)
    finished_copy = replica.finish()
    finished = m.finish()
    with torch.no_grad():
        torch.testing.assert_close(finished.encode_image(images), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(finished_copy.encode_image(images), expected, atol=1e-5, rtol=0)


def test_extra_averages_of_an_advlora_run_are_the_models_of_their_own_runs(model, data, tmp_path):
    """``extra_averaging: [ema]`` beside BMA: the run finishes (and finishes again when re-run), its main model is
    the BMA run's and its alternate the EMA run's, weight for weight."""
    import dataclasses

    from vlalign.training.loop import fit
    from vlalign.training.train_config import TrainConfig

    torch.set_num_threads(1)
    config = AdvLoRAConfig(rank=2, eps="4/255", attack_steps=1, kmeans_iterations=3)
    base = TrainConfig(steps=3, batch_size=4, lr=1e-2, checkpoint_every=3, log_every=1)
    both_loop = dataclasses.replace(base, averaging="bma", extra_averaging=["ema", "none"])
    both = fit(AdvLoRAMethod(model, data, config), both_loop, tmp_path / "both", progress=False)
    again = fit(AdvLoRAMethod(model, data, config), both_loop, tmp_path / "both", progress=False)
    assert again.already_finished and set(again.alternates) == {"ema", "none"}
    for kind, result in (("bma", both.model), ("ema", both.alternates["ema"]), ("none", both.alternates["none"]),
                         ("ema", again.alternates["ema"]), ("bma", again.model)):
        alone = fit(AdvLoRAMethod(model, data, config), dataclasses.replace(base, averaging=kind),
                    progress=False).model
        assert isinstance(result, MiniCLIP) and not any("lora_" in k for k in result.state_dict())
        a, b = alone.state_dict(), result.state_dict()
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), kind
    differs = lambda x, y: any(not torch.equal(x.state_dict()[k], y.state_dict()[k]) for k in x.state_dict())  # noqa
    assert differs(both.model, both.alternates["ema"]) and differs(both.model, both.alternates["none"])


def test_an_averaged_advlora_run_averages_merged_weights_and_keeps_no_peft_adapter(model, data, tmp_path):
    """AdvLoRA's averaged weights are the merged W_base + s·α·B A of each adapted layer; loading an average (here
    two points of a trajectory, as EMA would fold them) gives a plain model whose weights are that average, and
    the run keeps no peft adapter (an average of rank-r products is not rank r), saying why when asked for one."""
    m = method(model, data)
    start = {k: v.clone() for k, v in m.averaged_weights().items()}
    layer = m.adapter.layers[0]
    name = f"{layer.path}.weight"
    lora = layer.layer
    by_hand = (lora.get_base_layer().weight + lora.scaling["default"] * m.adapter.alphas()[layer.path]
               * (lora.lora_B["default"].parametrizations.weight.original.flatten(1)
                  @ lora.lora_A["default"].weight.flatten(1)).view_as(lora.get_base_layer().weight))
    torch.testing.assert_close(start[name], by_hand.detach(), atol=1e-6, rtol=0)
    assert not any("lora_" in k or k.endswith(".alpha") for k in start)
    optimizer = torch.optim.Adam([p for p in m.model.parameters() if p.requires_grad], lr=5e-2)
    loss = m(batch_of(data, list(range(8))))["loss"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    end = m.averaged_weights()
    average = {k: 0.5 * (start[k] + end[k]) for k in start}
    assert float((end[name] - start[name]).abs().max()) > 1e-4
    m.load_averaged_weights(average)
    finished = m.finish()
    assert isinstance(finished, MiniCLIP) and not any("lora_" in k for k in finished.state_dict())
    params = dict(finished.named_parameters())
    for key, value in average.items():
        torch.testing.assert_close(params[key], value, atol=1e-6, rtol=0)
    assert m.adapter_export is None
    with pytest.raises(ValueError, match="weight average.*no rank-r adapter"):
        m.save_peft_adapter(tmp_path / "peft")
