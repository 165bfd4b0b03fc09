"""The BLIP retrieval backend on a tiny BlipForImageTextRetrieval built offline from a BlipConfig, and retrieval
evaluation (clean, ITM re-ranked, attacked) through it and through a config-built transformers CLIPModel."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

transformers = pytest.importorskip("transformers")

from vlalign.attacks.pgd import PGD  # noqa: E402
from vlalign.data.retrieval_set import RetrievalSet  # noqa: E402
from vlalign.data.retrieval_world import RetrievalWorld, retrieval_vocabulary  # noqa: E402
from vlalign.evaluation.retrieval import retrieval_recall  # noqa: E402
from vlalign.evaluation.retrieval_eval import (  # noqa: E402
    evaluate_retrieval, itm_reranked_recall, robust_retrieval,
)
from vlalign.models import load_model  # noqa: E402
from vlalign.models.hf_blip import HFBlip  # noqa: E402

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
SIZE = 32
TEXTS = ["a small red star to the left of a large blue circle", "a star", "two shapes: a ring and a heart"]


def tiny_bert_tokenizer():
    """A word-level BERT tokenizer over the retrieval world's vocabulary, built in memory."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *retrieval_vocabulary(), ",", ":", ";"]
    vocab = {w: i for i, w in enumerate(words)}
    try:
        return transformers.BertTokenizer(vocab=vocab)  # transformers 5.x
    except TypeError:  # pragma: no cover - transformers 4.x
        import tempfile
        from pathlib import Path

        path = Path(tempfile.mkdtemp()) / "vocab.txt"
        path.write_text("\n".join(words) + "\n")
        return transformers.BertTokenizerFast(vocab_file=str(path))


def tiny_blip(tokenizer) -> HFBlip:
    config = transformers.BlipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                         eos_token_id=tokenizer.sep_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=SIZE, patch_size=8, initializer_range=0.02),  # default 1e-10: inputs ignored
        image_text_hidden_size=16,
    )
    torch.manual_seed(0)
    model = transformers.BlipForImageTextRetrieval(config).eval()
    return HFBlip(model, tokenizer, MEAN, STD, image_size=SIZE).eval()


@pytest.fixture(scope="module")
def in_memory() -> HFBlip:
    return tiny_blip(tiny_bert_tokenizer())


@pytest.fixture(scope="module")
def folder(in_memory, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_blip")
    in_memory.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def loaded(folder) -> HFBlip:
    return load_model(str(folder))


@pytest.fixture(scope="module")
def gallery() -> RetrievalSet:
    return RetrievalWorld().sample("test", 12, seed=3)


def reference_pixels(x: torch.Tensor) -> torch.Tensor:
    resized = F.interpolate(x, size=(SIZE, SIZE), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return (resized - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_folder_loads_through_load_model(folder, loaded, in_memory):
    assert json.loads((folder / "config.json").read_text())["model_type"] == "blip"
    assert isinstance(loaded, HFBlip) and not loaded.training
    assert (loaded.image_size, loaded.embed_dim) == (SIZE, 16)
    torch.testing.assert_close(loaded.mean.flatten(), torch.tensor(MEAN))
    x = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(x), in_memory.encode_image(x), atol=1e-6, rtol=0)
        torch.testing.assert_close(loaded.encode_text(TEXTS), in_memory.encode_text(TEXTS), atol=1e-6, rtol=0)
    assert float(loaded.logit_scale) == pytest.approx(1 / 0.07, rel=1e-3)  # BLIP's initial temperature


def test_itc_and_itm_match_the_transformers_forward(loaded):
    """Against BlipForImageTextRetrieval.forward: ITC cosine matrix (use_itm_head=False) and ITM logits."""
    x = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    tokens = loaded.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        itc = loaded.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                           pixel_values=reference_pixels(x), use_itm_head=False).itm_score
        itm = loaded.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                           pixel_values=reference_pixels(x), use_itm_head=True).itm_score
        ours_itc = loaded.encode_image(x) @ loaded.encode_text(TEXTS).t()
        ours_itm = loaded.itm_scores(x, TEXTS)
    torch.testing.assert_close(ours_itc, itc, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_itm, itm[:, 1], atol=1e-5, rtol=0)


def test_preprocess_matches_blip_image_processor(loaded, folder):
    processor = transformers.BlipImageProcessor.from_pretrained(str(folder))
    yy, xx = np.meshgrid(np.linspace(0, 1, 50), np.linspace(0, 1, 70), indexing="ij")
    array = (np.stack([yy, xx, 0.5 + 0.5 * np.sin(6 * xx + 3 * yy)], -1) * 255).astype(np.uint8)
    expected = processor(images=Image.fromarray(array), return_tensors="pt")["pixel_values"]
    ours = loaded.preprocess(torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255)
    assert ours.shape == expected.shape == (1, 3, SIZE, SIZE)  # both sides resized, no crop
    difference = (ours - expected).abs()
    assert float(difference.mean()) < 0.02 and float(difference.max()) < 0.1


def test_towers_and_pixel_gradients(loaded):
    image_ids = {id(p) for p in loaded.image_parameters()}
    text_ids = {id(p) for p in loaded.text_parameters()}
    model = loaded.model
    assert image_ids == {id(p) for p in [*model.vision_model.parameters(), *model.vision_proj.parameters()]}
    assert not image_ids & text_ids
    x = torch.rand(2, 3, 40, 40, requires_grad=True)
    loaded.encode_image(x)[:, 0].sum().backward()
    assert float(x.grad.abs().sum()) > 0


def test_missing_weights_is_a_clear_error(in_memory, tmp_path):
    in_memory.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="cannot load BLIP model"):
        load_model(str(tmp_path))


def test_hub_ids_dispatch_on_model_type(monkeypatch, folder, tmp_path):
    """A cached hub id is loaded by the wrapper its config's model_type names (the cache is faked by a folder)."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda spec, name, cache_dir=None: str(folder / name))
    original = HFBlip.from_pretrained
    monkeypatch.setattr(HFBlip, "from_pretrained",
                        classmethod(lambda cls, name, local_files_only=None: original(folder, local_files_only=True)))
    assert isinstance(load_model("Salesforce/blip-itm-base-coco"), HFBlip)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda spec, name, cache_dir=None: str(tmp_path / name))
    with pytest.raises(ValueError, match="model_type 'bert' is not supported"):
        load_model("some/bert")


def _brute_reranked_recall(model, data, ks):
    """Full matrices of ITM + ITC for every pair, ranked by a stable sort of the ITC order."""
    texts, owner = data.flat_captions()
    with torch.no_grad():
        image, text = model.encode_image(data.pixels()), model.encode_text(texts)
        itc = (image.double() @ text.double().t())
        itm = torch.stack([model.itm_scores(data.pixels(torch.tensor([i] * len(texts))), texts)
                           for i in range(len(data))]).double()
    total = (itm + itc).float()
    i2t = {k: 0.0 for k in ks}
    t2i = {k: 0.0 for k in ks}
    for i in range(len(data)):
        first = itc[i].argsort(descending=True, stable=True)  # first-stage order breaks ties
        ranked = first[total[i, first].argsort(descending=True, stable=True)]
        for k in ks:
            i2t[k] += float((owner[ranked[:k]] == i).any()) / len(data)
    for t in range(len(texts)):
        first = itc[:, t].argsort(descending=True, stable=True)
        ranked = first[total[first, t].argsort(descending=True, stable=True)]
        for k in ks:
            t2i[k] += float((ranked[:k] == owner[t]).any()) / len(texts)
    return i2t, t2i


def test_itm_reranking_over_the_whole_gallery_matches_brute_force(loaded, gallery):
    got = itm_reranked_recall(loaded, gallery, k=5 * len(gallery), ks=(1, 5, 10), batch_size=7)  # every pair
    i2t, t2i = _brute_reranked_recall(loaded, gallery, (1, 5, 10))
    for k in (1, 5, 10):
        assert got["i2t"][f"r{k}"] == pytest.approx(i2t[k], abs=1e-6)
        assert got["t2i"][f"r{k}"] == pytest.approx(t2i[k], abs=1e-6)
    with pytest.raises(ValueError, match="re-ranking depth"):
        itm_reranked_recall(loaded, gallery, k=5)


@pytest.mark.parametrize("backend", ["blip", "clip"])
def test_retrieval_evaluation_runs_on_transformers_models(backend, loaded, gallery):
    if backend == "clip":
        from test_hf_clip import tiny_clip_model, tiny_tokenizer

        from vlalign.models.hf_clip import HFCLIP

        tokenizer = tiny_tokenizer()
        model = HFCLIP(tiny_clip_model(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id), tokenizer,
                       MEAN, STD, resize_to=36, crop_size=32).eval()
    else:
        model = loaded
    clean = evaluate_retrieval(model, gallery, batch_size=5)
    texts, owner = gallery.flat_captions()
    with torch.no_grad():
        expected = retrieval_recall(model.encode_image(gallery.pixels()), model.encode_text(texts), owner)
    assert clean["mR"] == pytest.approx(expected["mR"])
    for direction in ("i2t", "t2i"):
        assert clean[direction] == pytest.approx(expected[direction])
    attacked = robust_retrieval(model, gallery, PGD(8 / 255, steps=3), batch_size=5)
    assert set(attacked) == {"i2t", "t2i", "mR"} and 0 <= attacked["mR"] <= 1


def test_attacked_retrieval_objective_and_transfer(loaded, gallery, tiny_mini_clip):
    """The gallery objective is CE over per-image caption centroids; it rebuilds itself on a surrogate, so a
    transfer attack (crafted on another model, here a MiniCLIP) runs on the same gallery."""
    from vlalign.attacks.transfer import TransferAttack
    from vlalign.evaluation.retrieval_eval import GalleryRetrievalObjective, caption_centroids

    texts, owner = gallery.flat_captions()
    rows = torch.tensor([1, 4, 6])
    objective = GalleryRetrievalObjective(loaded, texts, owner, rows)
    with torch.no_grad():
        text = loaded.encode_text(texts)
        centroids = F.normalize(torch.stack([text[owner == i].mean(0) for i in range(len(gallery))]), dim=-1)
        torch.testing.assert_close(caption_centroids(text, owner, len(gallery)), centroids, atol=1e-6, rtol=0)
        pixels = gallery.pixels(rows)
        expected = F.cross_entropy(loaded.logit_scale * loaded.encode_image(pixels) @ centroids.t(), rows, reduction="none")
        torch.testing.assert_close(objective(pixels).loss, expected, atol=1e-4, rtol=1e-5)
    surrogate = objective.for_model(tiny_mini_clip)
    assert surrogate.candidates.shape == (len(gallery), tiny_mini_clip.embed_dim)
    attacked = robust_retrieval(loaded, gallery, TransferAttack(8 / 255, surrogate=tiny_mini_clip, steps=2), batch_size=6)
    assert 0 <= attacked["mR"] <= 1
