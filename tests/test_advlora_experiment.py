"""``vlalign experiment advlora --quick`` end to end on a tiny retrieval MiniCLIP built from a config: the shape
of metrics.json, the sanity of its numbers, the report and its rebuild; and the merged AdvLoRA model saved as a
plain model computes what the adapted model computed."""

from __future__ import annotations

import json

import pytest
import torch

from vlalign.data.retrieval_world import RetrievalWorld, retrieval_vocabulary, write_misleading_words
from vlalign.data.scene_captions import longest_caption_words
from vlalign.experiments import advlora, advlora_select
from vlalign.models.loading import load_model, save_model
from vlalign.models.mini_clip import MiniCLIP, MiniCLIPConfig

RECALL_KEYS = {f"r{k}" for k in (1, 5, 10)}


def tiny_model() -> MiniCLIP:
    torch.manual_seed(0)
    return MiniCLIP(MiniCLIPConfig(image_size=32, stem_channels=(8, 16, 32), vision_width=32, vision_layers=1,
                                   vision_heads=2, text_width=32, text_layers=1, text_heads=2, embed_dim=16,
                                   vocab=retrieval_vocabulary(), max_text_length=longest_caption_words() + 2)).eval()


def check_recall(value: dict) -> None:
    assert set(value) == {"i2t", "t2i", "mR"}
    six = [value[d][k] for d in ("i2t", "t2i") for k in sorted(RECALL_KEYS)]
    assert set(value["i2t"]) == set(value["t2i"]) == RECALL_KEYS
    assert all(0.0 <= v <= 1.0 for v in six)
    for d in ("i2t", "t2i"):
        assert value[d]["r1"] <= value[d]["r5"] <= value[d]["r10"]
    assert value["mR"] == pytest.approx(sum(six) / 6)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("tiny")
    save_model(tiny_model(), folder)
    out = tmp_path_factory.mktemp("advlora")
    quick = {**advlora.QUICK, "model": str(folder)}
    patch = pytest.MonkeyPatch()
    patch.setattr(advlora, "QUICK", quick)
    try:
        metrics = advlora.run_advlora_experiment(out, quick=True)
    finally:
        patch.undo()
    return out, metrics, load_model(folder)


def test_metrics_json_has_the_issues_shape(run):
    out, metrics, base = run
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert set(metrics["methods"]) == set(advlora.ROWS) == {
        "full_clean", "full_adversarial", "lora_clean", "lora_adversarial", "advlora", "advlora_no_cluster_init",
        "advlora_no_alignment", "advlora_no_adaptive_alpha"}
    total = sum(p.numel() for p in base.parameters())
    for name, row in metrics["methods"].items():
        assert {"trainable_params", "trainable_fraction", "clean", "pgd", "fgsm", "transfer", "seconds"} <= set(row)
        for condition in ("clean", "pgd", "fgsm", "transfer"):
            check_recall(row[condition])
        assert row["trainable_fraction"] == pytest.approx(row["trainable_params"] / total)
        assert row["seconds"] > 0
    image_tower = sum(p.numel() for p in base.image_parameters())
    assert metrics["methods"]["full_adversarial"]["trainable_params"] == image_tower
    # LoRA at rank r on the stem convolutions: r·(in·k·k + out) per k x k nn.Conv2d (A: a k x k convolution into
    # r channels, B: a 1x1 one; r·(in + out) per nn.Linear); AdvLoRA adds one α per layer.
    rank = metrics["settings"]["rank"]
    assert metrics["settings"]["image_targets"] == list(advlora.STEM_CONVS)
    layers = [m for n, m in base.visual.named_modules() if any(n == t or n.endswith("." + t)
                                                                 for t in advlora.STEM_CONVS)]
    assert len(layers) == 6 and all(isinstance(m, torch.nn.Conv2d) for m in layers)

    def lora_size(m):
        return rank * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)

    lora = sum(lora_size(m) for m in layers)
    assert metrics["methods"]["lora_adversarial"]["trainable_params"] == lora
    assert metrics["methods"]["advlora"]["trainable_params"] == lora + len(layers)
    assert metrics["methods"]["advlora_no_adaptive_alpha"]["trainable_params"] == lora
    assert set(metrics["rank_sweep"]) == {"1", str(rank)}
    assert metrics["rank_sweep"][str(rank)]["pgd"] == metrics["methods"]["advlora"]["pgd"]
    for entry in metrics["rank_sweep"].values():
        check_recall(entry["clean"])
        check_recall(entry["pgd"])
    assert set(metrics["compound"]) == {"pretrained", *advlora.COMPOUND_ROWS}
    for cells in metrics["compound"].values():
        assert set(cells) == {"clean", "word", "pgd", "word_pgd"} and all(0 <= v <= 1 for v in cells.values())
    assert set(metrics["alpha"]) == {"advlora", "advlora_no_cluster_init", "advlora_no_alignment", "advlora_r1"}
    assert all(len(a["step"]) == len(a["alpha_mean"]) > 0 for a in metrics["alpha"].values())
    assert set(metrics["targets"]) and all(isinstance(t["met"], bool) for t in metrics["targets"].values())


def test_the_attacks_do_not_help_and_the_transfer_images_are_the_pretrained_models_pgd(run):
    _, metrics, _ = run
    pretrained = metrics["pretrained"]
    # The surrogate is the pretrained model itself, so its transfer row is a white-box PGD with another seed.
    assert pretrained["transfer"]["mR"] <= pretrained["clean"]["mR"]
    for row in metrics["methods"].values():
        # A 24-image gallery and a near-random model: the attack must not help beyond a query's flip or two.
        assert row["pgd"]["mR"] <= row["clean"]["mR"] + 0.02


def test_report_plots_and_rebuild(run):
    from vlalign.commands.report import rebuild

    out, _, _ = run
    for name in ("report.md", "report.html", "report.json", "alpha.png", "rank_sweep.png", "robustness.png"):
        assert (out / name).is_file(), name
    text = (out / "report.md").read_text()
    assert "## Targets" in text and "AdvLoRA − alignment" in text and "word + PGD" in text
    assert json.loads((out / "report.json").read_text())["kind"] == "experiment-advlora"
    (out / "report.md").unlink()
    rebuild(out)
    assert (out / "report.md").read_text().split("\n## Run\n")[0] == text.split("\n## Run\n")[0]
    # Every row's merged model is a plain MiniCLIP folder; LoRA rows also keep a peft adapter.
    assert isinstance(load_model(out / "models" / "advlora"), MiniCLIP)
    assert (out / "models" / "advlora" / "peft" / "adapter_model.safetensors").is_file()
    assert not (out / "models" / "full_adversarial" / "peft").exists()


def test_merged_model_saved_as_a_plain_model_equals_the_adapted_model(tmp_path):
    from vlalign.data.retrieval_set import collate_retrieval
    from vlalign.training.methods.advlora import AdvLoRAConfig, AdvLoRAMethod

    data = RetrievalWorld().sample("train", 8, seed=0)
    method = AdvLoRAMethod(tiny_model(), data, AdvLoRAConfig(rank=2, eps="4/255", attack_steps=1))
    method.prepare(torch.device("cpu"))
    optimizer = torch.optim.Adam([p for p in method.model.parameters() if p.requires_grad], lr=2e-2)
    batch = {"train": collate_retrieval([data[i] for i in range(8)]), "step": 0, "seed": 0}
    for _ in range(3):
        loss = method(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert any(abs(a - 1.0) > 1e-4 for a in method.alphas().values())  # α moved, so folding it matters
    pixels = data.pixels(torch.arange(8))
    texts = [c[0] for c in data.captions]
    method.model.eval()
    with torch.no_grad():
        adapted = method.model.encode_image(pixels), method.model.encode_text(texts)
    save_model(method.finish(), tmp_path / "merged")
    loaded = load_model(tmp_path / "merged")
    assert isinstance(loaded, MiniCLIP) and not any("lora" in k for k in loaded.state_dict())
    with torch.no_grad():
        assert float((loaded.encode_image(pixels) - adapted[0]).abs().max()) <= 1e-5
        assert float((loaded.encode_text(texts) - adapted[1]).abs().max()) <= 1e-5


def test_misleading_words_write_a_word_the_scene_does_not_show():
    from vlalign.data.retrieval_set import RetrievalSet
    from vlalign.data.retrieval_world import WORDS

    data = RetrievalWorld().sample("test", 12, seed=3)
    worded, words = write_misleading_words(data, seed=0)
    again, _ = write_misleading_words(data, seed=0)
    assert torch.equal(worded.images, again.images) and worded.captions == data.captions
    assert (worded.images != data.images).flatten(1).any(1).all()
    for scene, word in zip(data.scenes, words):
        assert word in WORDS and word != scene.word
        assert all(word not in (obj.shape, obj.colour) for obj in scene.objects)
    assert not torch.equal(write_misleading_words(data, seed=1)[0].images, worded.images)
    with pytest.raises(ValueError, match="scenes"):
        write_misleading_words(RetrievalSet(data.images, data.captions), seed=0)


def test_experiment_config_errors_name_the_field():
    with pytest.raises(ValueError, match="lr"):
        advlora.AdvLoRAExperiment(lr={"full": 1e-4, "lora": 4e-2, "advlora": 4e-2})
    with pytest.raises(ValueError, match="ranks"):
        advlora.AdvLoRAExperiment(ranks=[0])
    assert advlora.experiment_config(quick=True, seed=3).train.seed == 3
    assert advlora.row_config("advlora_no_cluster_init", advlora.experiment_config()).alignment_target == "init"
    with pytest.raises(ValueError, match="alpha_lr_scale"):
        advlora.AdvLoRAExperiment(alpha_lr_scale=0.0)


def test_only_the_advlora_rows_take_the_experiments_alpha_rate():
    config = advlora.AdvLoRAExperiment(alpha_lr_scale=0.01)
    scales = {row: advlora.row_config(row, config).alpha_lr_scale for row in advlora.ROWS}
    assert scales == {row: 0.01 if fields["trainable"] == "advlora" else 1.0 for row, fields in advlora.ROWS.items()}


def test_placement_settings_reach_the_rows_they_are_for():
    config = advlora.AdvLoRAExperiment(full_parameters=["stem.0."], rank_pattern={"stem.0": 16})
    for row, fields in advlora.ROWS.items():
        made = advlora.row_config(row, config)
        full = fields["trainable"] == "full"
        assert made.full_parameters == (["stem.0."] if full else None)
        assert made.image_targets == (None if full else list(advlora.STEM_CONVS))
        assert made.rank_pattern == ({} if full else {"stem.0": 16})
    # The rank sweep's rows are uniform in rank.
    assert advlora.row_config("advlora", config, rank=2).rank_pattern == {}


def test_with_per_layer_ranks_the_sweep_still_trains_its_uniform_point(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    folder = tmp_path / "tiny"
    save_model(tiny_model(), folder)
    quick = {**advlora.QUICK, "model": str(folder), "rank_pattern": {"stem.0": 2}}
    monkeypatch.setattr(advlora, "QUICK", quick)
    metrics = advlora.run_advlora_experiment(tmp_path / "run", quick=True)
    assert metrics["methods"]["advlora"]["rank_pattern"] == {"stem.0": 2}
    assert metrics["methods"]["full_adversarial"]["rank_pattern"] is None
    rank = metrics["settings"]["rank"]
    assert set(metrics["rank_sweep"]) == {"1", str(rank)}
    # stem.0 (3 -> 8 channels, 3 x 3) costs r·(27 + 8): the uniform point has rank - 2 more ranks there than the row.
    assert metrics["rank_sweep"][str(rank)]["trainable_params"] == (
        metrics["methods"]["advlora"]["trainable_params"] + (rank - 2) * (27 + 8))


def test_the_rank_sweep_always_holds_the_rows_own_rank():
    assert advlora.sweep_ranks(advlora.AdvLoRAExperiment(rank=5, ranks=[16, 1, 4])) == [1, 4, 5, 16]
    assert advlora.sweep_ranks(advlora.AdvLoRAExperiment(rank=4, ranks=[1, 4])) == [1, 4]


def test_clean_and_adversarial_training_have_their_own_learning_rate_families():
    assert {advlora.family(row) for row in advlora.ROWS} == set(advlora.FAMILIES)
    assert [advlora.family(row) for row in ("full_clean", "full_adversarial", "lora_clean", "lora_adversarial")] == [
        "full_clean", "full", "lora_clean", "lora"]
    assert {advlora.family(row) for row in advlora.ROWS if row.startswith("advlora")} == {"advlora"}
    assert [advlora.selection_metric(row) for row in advlora.SELECTION_ROWS] == ["clean", "pgd", "clean", "pgd", "pgd"]


def test_selection_uses_val_and_picks_each_familys_best_val_recall(tmp_path, monkeypatch):
    """An adversarial family is chosen by its val mR under PGD, a clean one by its clean val mR (ties: lower lr)."""
    folder = tmp_path / "tiny"
    save_model(tiny_model(), folder)
    monkeypatch.setattr(advlora, "QUICK", {**advlora.QUICK, "model": str(folder)})
    metrics = advlora_select.run_advlora_selection(tmp_path / "select", quick=True)
    assert set(metrics["grid"]) == {"advlora", "lora_clean"}
    assert set(metrics["grid"]["advlora"]) == set(metrics["grid"]["lora_clean"]) == {"0.001", "0.003"}

    def best(fam: str, metric: str) -> float:
        return float(max(metrics["grid"][fam].items(), key=lambda kv: (kv[1][metric]["mR"], -float(kv[0])))[0])

    assert metrics["chosen"] == {"advlora": best("advlora", "pgd"), "lora_clean": best("lora_clean", "clean"),
                                 "full": 1e-4, "full_clean": 1e-4, "lora": 3e-3}
    assert metrics["criterion"] == {"full_clean": "clean", "full": "pgd", "lora_clean": "clean", "lora": "pgd",
                                    "advlora": "pgd"}
    for cell in metrics["grid"]["advlora"].values():
        check_recall(cell["clean"])
        check_recall(cell["pgd"])
    assert metrics["settings"]["val_images"] == advlora.QUICK["val_images"]
    assert "chosen" in (tmp_path / "select" / "report.md").read_text()


def test_crafted_pixels_score_as_the_attack_inside_robust_retrieval():
    """adversarial_pixels + recall_of_pixels (the transfer column's path) against robust_retrieval and
    evaluate_retrieval, which embed inside the attack loop."""
    from vlalign.attacks.pgd import PGD
    from vlalign.evaluation.retrieval_eval import (
        adversarial_pixels, evaluate_retrieval, recall_of_pixels, robust_retrieval,
    )

    model = tiny_model()
    data = RetrievalWorld().sample("test", 10, seed=4)
    assert recall_of_pixels(model, data.pixels(), data) == evaluate_retrieval(model, data)
    attack = PGD(8 / 255, steps=2)
    pixels = adversarial_pixels(model, data, attack, batch_size=4, seed=3)
    assert pixels.shape == data.images.shape and float((pixels - data.pixels()).abs().max()) <= 8 / 255 + 1e-6
    assert 0 <= float(pixels.min()) and float(pixels.max()) <= 1
    crafted = recall_of_pixels(model, pixels, data)
    inside = robust_retrieval(model, data, attack, batch_size=4, seed=3)
    for d in ("i2t", "t2i"):
        for k in RECALL_KEYS:
            assert crafted[d][k] == pytest.approx(inside[d][k], abs=1e-9)
    with pytest.raises(ValueError, match="gallery of 10"):
        recall_of_pixels(model, pixels[:3], data)
