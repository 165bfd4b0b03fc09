"""AdvLoRA adapters: k-means, clustering init (outputs unchanged), alignment penalty, adaptive α through peft's
merge, merged models saved as plain models of their backend, and the peft adapter format."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vlalign.models.adapters import AdapterSpec, alignment_penalty, apply_advlora, load_peft_adapter, kmeans
from vlalign.models.adapters.kmeans import inertia
from vlalign.models.loading import load_model, save_model

TEXTS = ["a small red star to the left of a large blue circle", "two shapes, a ring and a heart"]


def pixels(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def outputs(model, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.encode_image(pixels(size=size)), model.encode_text(TEXTS)


def max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def perturb_adapters(model, seed: int = 1) -> None:
    """Move every trainable tensor (A, B, α) as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=g) * (1 + param.abs().mean()))


# --- k-means ------------------------------------------------------------------------------------------------

def test_kmeans_recovers_separated_blobs_deterministically():
    g = torch.Generator().manual_seed(0)
    truth = torch.arange(3).repeat_interleave(20)
    centres = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    points = centres[truth] + 0.3 * torch.randn(60, 3, generator=g)
    found, labels = kmeans(points, 3, seed=4)
    # Same partition as the truth, up to renaming the clusters.
    pairs = {(int(a), int(b)) for a, b in zip(truth, labels)}
    assert len(pairs) == 3 and len({b for _, b in pairs}) == 3
    for a, b in pairs:
        torch.testing.assert_close(found[b], points[truth == a].mean(0))
    again = kmeans(points, 3, seed=4)
    assert torch.equal(again[0], found) and torch.equal(again[1], labels)


def test_kmeans_is_a_local_optimum_and_handles_duplicates():
    points = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    centres, labels = kmeans(points, 5, seed=0)
    # Lloyd's fixed point: every point is nearest to its own centre, every centre is its cluster's mean.
    assert torch.equal(torch.cdist(points.double(), centres.double()).argmin(1), labels)
    for j in range(5):
        torch.testing.assert_close(centres[j], points[labels == j].mean(0))
    assert inertia(points, centres, labels) < inertia(points, points.mean(0, keepdim=True), torch.zeros(40, dtype=torch.long))
    # k = n: every point its own centre. Identical points: no empty cluster, no NaN.
    c, lab = kmeans(points[:4], 4, seed=2)
    assert inertia(points[:4], c, lab) == pytest.approx(0.0, abs=1e-10)
    same = torch.ones(6, 3)
    c, lab = kmeans(same, 3, seed=0)
    assert torch.isfinite(c).all() and torch.bincount(lab, minlength=3).min() >= 1
    with pytest.raises(ValueError, match="k must be in"):
        kmeans(points[:3], 4)


# --- the pure alignment penalty -----------------------------------------------------------------------------

def test_alignment_penalty_against_an_elementwise_loop():
    g = torch.Generator().manual_seed(2)
    delta, target, reference = (torch.randn(4, 5, generator=g, dtype=torch.float64) for _ in range(3))
    numerator = sum((target[i, j] - delta[i, j]) ** 2 for i in range(4) for j in range(5))
    denominator = sum(reference[i, j] ** 2 for i in range(4) for j in range(5))
    assert float(alignment_penalty(delta, target, reference)) == pytest.approx(float(numerator / denominator), rel=1e-12)
    assert float(alignment_penalty(target, target, reference)) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        alignment_penalty(delta, target[:2], reference)


# --- AdvLoRA on a MiniCLIP ----------------------------------------------------------------------------------

@pytest.fixture
def base(tiny_mini_clip):
    with torch.no_grad():  # a non-trivial, non-random-looking model: shift weights so rows cluster
        for p in tiny_mini_clip.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return tiny_mini_clip


@pytest.mark.parametrize("text", [False, True])
def test_cluster_init_leaves_outputs_unchanged(base, text):
    before = outputs(base)
    model = copy.deepcopy(base)
    adapter = apply_advlora(model, AdapterSpec(rank=4, text_targets=None if text else []))
    assert max_diff(outputs(model), before) <= 1e-5
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any(n.endswith("parametrizations.weight.0.alpha") for n in trainable)
    assert any(n.startswith("text.") for n in trainable) == text
    assert len(adapter.layers) == 2 * (len(model.visual.blocks) + (len(model.text.blocks) if text else 0))


def test_cluster_init_builds_the_kmeans_reconstruction(base):
    model = copy.deepcopy(base)
    adapter = apply_advlora(model, AdapterSpec(rank=4, alpha_init=0.5, lora_alpha=8.0))
    record = adapter.layers[0]
    original = base.get_submodule(record.path).weight.detach()
    centres, labels = kmeans(original, 4, seed=0)
    # ΔW_init = s·α₀·B A replaces each row of W₀ by its cluster centre, and W_base = W₀ − ΔW_init.
    delta = adapter.delta(record).detach()
    torch.testing.assert_close(delta, centres[labels], atol=1e-6, rtol=0)
    torch.testing.assert_close(record.layer.get_base_layer().weight + delta, original, atol=1e-6, rtol=0)
    a, b = record.layer.lora_A["default"].weight, record.layer.lora_B["default"].parametrizations.weight.original
    assert float(a.detach().norm()) == pytest.approx(float(b.detach().norm()), rel=1e-5)  # balanced factors
    # The paper's penalty starts at the relative k-means residual; the drift penalty at zero.
    residual = float((original - centres[labels]).pow(2).sum() / original.pow(2).sum())
    penalties = [float(alignment_penalty(adapter.delta(r).detach(), r.layer.get_base_layer().weight + adapter.initial_delta(r),
                                         r.layer.get_base_layer().weight + adapter.initial_delta(r))) for r in adapter.layers]
    assert penalties[0] == pytest.approx(residual, rel=1e-4)
    penalty = float(adapter.alignment_penalty("pretrained").detach())
    assert penalty == pytest.approx(sum(penalties) / len(penalties), rel=1e-5)
    assert float(adapter.alignment_penalty("init").detach()) == pytest.approx(0.0, abs=1e-10)


def test_plain_lora_init_and_penalty_without_clustering(base):
    model = copy.deepcopy(base)
    adapter = apply_advlora(model, AdapterSpec(rank=4, cluster_init=False, adaptive_alpha=False))
    assert max_diff(outputs(model), outputs(base)) == 0.0  # peft's B = 0
    assert all(float(r.layer.lora_B["default"].weight.abs().max()) == 0 for r in adapter.layers)
    assert float(adapter.alignment_penalty("pretrained").detach()) == pytest.approx(1.0)  # ‖W₀ − 0‖² / ‖W₀‖²
    assert adapter.alphas() == {r.path: 1.0 for r in adapter.layers}


def test_plain_lora_init_follows_the_spec_seed_and_leaves_the_global_generator_alone(base):
    def lora_a(spec_seed: int) -> list[torch.Tensor]:
        adapter = apply_advlora(copy.deepcopy(base), AdapterSpec(rank=4, cluster_init=False, adaptive_alpha=False,
                                                                 seed=spec_seed))
        return [r.layer.lora_A["default"].weight.detach().clone() for r in adapter.layers]

    torch.manual_seed(1)
    expected_next = torch.rand(())
    torch.manual_seed(1)
    first = lora_a(0)
    assert torch.equal(torch.rand(()), expected_next)  # the caller's generator is where it was
    torch.manual_seed(2)
    assert all(torch.equal(a, b) for a, b in zip(first, lora_a(0)))
    assert not any(torch.equal(a, b) for a, b in zip(first, lora_a(1)))


def test_adaptive_alpha_scales_the_update_and_merge_sees_it(base):
    model = copy.deepcopy(base)
    adapter = apply_advlora(model, AdapterSpec(rank=4))
    perturb_adapters(model)
    record = adapter.layers[0]
    lora_b = record.layer.lora_B["default"]
    alpha = lora_b.parametrizations.weight[0].alpha
    with torch.no_grad():
        alpha.fill_(1.7)
    raw_b = lora_b.parametrizations.weight.original
    expected = record.layer.scaling["default"] * 1.7 * raw_b @ record.layer.lora_A["default"].weight
    torch.testing.assert_close(adapter.delta(record), expected)
    assert adapter.alphas()[record.path] == pytest.approx(1.7)
    # Y = X W_baseᵀ + α·s·X Aᵀ Bᵀ (+ bias), checked on the layer itself.
    x = torch.randn(5, record.layer.in_features)
    base_layer = record.layer.get_base_layer()
    torch.testing.assert_close(record.layer(x), base_layer(x) + x @ expected.t(), atol=1e-5, rtol=0)
    # α gets a gradient.
    model.encode_image(pixels()).sum().backward()
    assert alpha.grad is not None and float(alpha.grad.abs()) > 0
    assert record.layer.get_base_layer().weight.grad is None
    adapted = outputs(model)
    merged = adapter.merge()
    assert max_diff(outputs(merged), adapted) <= 1e-5
    assert not any("lora_" in k or "parametrizations" in k for k in merged.state_dict())


def test_merged_minicip_saves_as_a_plain_minicip_folder(base, tmp_path):
    model = copy.deepcopy(base)
    adapter = apply_advlora(model, AdapterSpec(rank=4, text_targets=None))
    perturb_adapters(model)
    adapted = outputs(model)
    adapter.save_peft(tmp_path / "adapter")
    save_model(adapter.merge(), tmp_path / "merged")
    loaded = load_model(tmp_path / "merged")
    assert type(loaded).__name__ == "MiniCLIP" and max_diff(outputs(loaded), adapted) <= 1e-5
    # The peft adapter applies to the *pre-trained* model (it carries −ΔW_init at rank 2r).
    config = (tmp_path / "adapter" / "adapter_config.json").read_text()
    assert '"r": 8' in config and '"peft_type": "LORA"' in config
    restored = load_peft_adapter(copy.deepcopy(base), tmp_path / "adapter")
    assert max_diff(outputs(restored), adapted) <= 1e-5


def test_conv_stem_targets_cluster_init_merge_and_export(base, tmp_path):
    """Conv2d targets (MiniCLIP's stem): the k-means rows are the flattened output filters; outputs unchanged at
    init; merged and peft-exported models equal the adapted one."""
    targets = ["stem.3", "attn.proj"]
    model = copy.deepcopy(base)
    adapter = apply_advlora(model, AdapterSpec(rank=3, image_targets=targets))
    assert {r.path for r in adapter.layers} == {"visual.stem.3", *(f"visual.blocks.{i}.attn.proj" for i in range(len(model.visual.blocks)))}
    assert max_diff(outputs(model), outputs(base)) <= 1e-5
    record = next(r for r in adapter.layers if r.path == "visual.stem.3")
    original = base.get_submodule(record.path).weight.detach()
    centres, labels = kmeans(original.flatten(1), 3, seed=0)
    torch.testing.assert_close(adapter.delta(record).detach(), centres[labels].view_as(original), atol=1e-6, rtol=0)
    torch.testing.assert_close(adapter.initial_delta(record), centres[labels].view_as(original), atol=1e-6, rtol=0)
    assert float(adapter.alignment_penalty("init")) == pytest.approx(0.0, abs=1e-10)
    perturb_adapters(model)
    adapted = outputs(model)
    adapter.save_peft(tmp_path / "adapter")
    save_model(adapter.merge(), tmp_path / "merged")
    loaded = load_model(tmp_path / "merged")
    assert isinstance(loaded.visual.stem[3], nn.Conv2d) and max_diff(outputs(loaded), adapted) <= 1e-5
    restored = load_peft_adapter(copy.deepcopy(base), tmp_path / "adapter")
    assert max_diff(outputs(restored), adapted) <= 1e-5


@pytest.mark.parametrize("cluster_init, lora_alpha", [(True, None), (False, None), (True, 8.0), (False, 8.0)])
def test_rank_pattern_gives_each_layer_its_rank_through_init_merge_and_export(base, tmp_path, cluster_init, lora_alpha):
    """Per-layer ranks (peft's rank_pattern): each layer's factors have its rank, the parameter count is the sum of
    the layers' LoRA costs, the clustering init clusters into that many centres, and merged and peft-exported
    models (mixed ranks) equal the adapted one."""
    from vlalign.models.adapters.rank_profile import lora_parameter_count

    model = copy.deepcopy(base)
    spec = AdapterSpec(rank=2, rank_pattern={"stem.3": 5, "blocks.0.attn.proj": 1}, lora_alpha=lora_alpha,
                       image_targets=["stem.0", "stem.3", "attn.proj"], cluster_init=cluster_init,
                       adaptive_alpha=cluster_init)
    adapter = apply_advlora(model, spec)
    # One scaling, lora_alpha / rank, on every layer, whatever its own rank.
    assert {r.layer.scaling["default"] for r in adapter.layers} == {1.0 if lora_alpha is None else lora_alpha / 2}
    ranks = {r.path: r.layer.lora_A["default"].weight.shape[0] for r in adapter.layers}
    expected = {"visual.stem.0": 2, "visual.stem.3": 5, "visual.blocks.0.attn.proj": 1}
    expected.update({f"visual.blocks.{i}.attn.proj": 2 for i in range(1, len(model.visual.blocks))})
    assert ranks == expected
    lora = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name and not name.endswith(".alpha"))
    assert lora == sum(lora_parameter_count(base.get_submodule(path).weight.shape, r) for path, r in ranks.items())
    assert max_diff(outputs(model), outputs(base)) <= 1e-5
    if cluster_init:
        record = next(r for r in adapter.layers if r.path == "visual.stem.3")
        original = base.get_submodule(record.path).weight.detach()
        centres, labels = kmeans(original.flatten(1), 5, seed=1_000_003 * spec.seed + 1)
        torch.testing.assert_close(adapter.initial_delta(record), centres[labels].view_as(original), atol=1e-6, rtol=0)
    perturb_adapters(model)
    adapted = outputs(model)
    adapter.save_peft(tmp_path / "adapter")
    save_model(adapter.merge(), tmp_path / "merged")
    assert max_diff(outputs(load_model(tmp_path / "merged")), adapted) <= 1e-5
    assert max_diff(outputs(load_peft_adapter(copy.deepcopy(base), tmp_path / "adapter")), adapted) <= 1e-5


def test_rank_pattern_errors_name_the_problem(base):
    from vlalign.models.adapters.advlora import layer_ranks

    paths = ["visual.stem.0", "visual.stem.3", "visual.stem.12"]
    assert layer_ranks(paths, AdapterSpec(rank=2, rank_pattern={"stem.3": 4})) == {
        "visual.stem.0": 2, "visual.stem.3": 4, "visual.stem.12": 2}
    with pytest.raises(ValueError, match=r"\['stem.9'\] match no adapted layer"):
        layer_ranks(paths, AdapterSpec(rank=2, rank_pattern={"stem.9": 4}))
    with pytest.raises(ValueError, match="more than one rank_pattern name"):
        layer_ranks(paths, AdapterSpec(rank=2, rank_pattern={"stem.0": 4, "visual.stem.0": 3}))
    with pytest.raises(ValueError, match="rank_pattern"):
        AdapterSpec(rank=2, rank_pattern={"stem.0": 0})
    rows = base.visual.stem[0].weight.shape[0]
    with pytest.raises(ValueError, match=f"visual.stem.0: .* <= the layer's {rows} output units"):
        apply_advlora(copy.deepcopy(base), AdapterSpec(rank=2, rank_pattern={"stem.0": rows + 1},
                                                       image_targets=["stem.0"]))


# --- transformers backends ----------------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")


def hf_models():
    from test_hf_blip import tiny_bert_tokenizer, tiny_blip
    from test_hf_clip import tiny_clip_model, tiny_tokenizer

    from vlalign.models.hf_clip import HFCLIP

    tokenizer = tiny_tokenizer()
    clip = HFCLIP(tiny_clip_model(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id), tokenizer,
                  (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), resize_to=32, crop_size=32).eval()
    return {"clip": clip, "blip": tiny_blip(tiny_bert_tokenizer())}


@pytest.mark.parametrize("backend", ["clip", "blip"])
def test_transformers_backends_adapt_merge_save_and_export(backend, tmp_path):
    base = hf_models()[backend]
    before = outputs(base)
    model = copy.deepcopy(base)
    adapter = apply_advlora(model, AdapterSpec(rank=2, text_targets=None))
    assert max_diff(outputs(model), before) <= 1e-5
    expected_leaves = {"clip": {"q_proj", "k_proj", "v_proj", "out_proj"},
                       "blip": {"qkv", "projection", "query", "key", "value", "dense"}}[backend]
    assert {r.path.rsplit(".", 1)[-1] for r in adapter.layers} == expected_leaves
    assert not any("crossattention" in r.path for r in adapter.layers)
    perturb_adapters(model)
    adapted = outputs(model)
    assert max_diff(adapted, before) > 1e-4
    adapter.save_peft(tmp_path / "adapter")
    save_model(adapter.merge(), tmp_path / "merged")
    loaded = load_model(tmp_path / "merged")
    assert type(loaded) is type(base) and max_diff(outputs(loaded), adapted) <= 1e-5
    restored = load_peft_adapter(copy.deepcopy(base), tmp_path / "adapter")
    assert max_diff(outputs(restored), adapted) <= 1e-5
    if backend == "clip":  # peft's own loader reads the same folder onto the transformers model
        from peft import PeftModel

        original = copy.deepcopy(base)
        peft_model = PeftModel.from_pretrained(original.model, str(tmp_path / "adapter"))
        with torch.no_grad():
            features = peft_model.base_model.model.get_image_features(pixel_values=original.preprocess(pixels()))
        features = features if isinstance(features, torch.Tensor) else features.pooler_output
        torch.testing.assert_close(nn.functional.normalize(features, dim=-1), adapted[0], atol=1e-5, rtol=0)
