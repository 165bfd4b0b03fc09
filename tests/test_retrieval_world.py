"""The retrieval split of the mini world: determinism, disjoint splits, captions and their exact ambiguity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlalign.data.retrieval_world import RETRIEVAL_SPLITS, WORDS, RetrievalWorld, RetrievalWorldConfig, retrieval_vocabulary
from vlalign.data.scene_captions import (
    TEMPLATES, Claim, ObjectClaim, Scene, SceneObject, ambiguous_caption_share, describes, longest_caption_words,
    region, relation,
)
from vlalign.models.tokenizer import WordTokenizer, split_words


@pytest.fixture(scope="module")
def retrieval_world():
    return RetrievalWorld()


@pytest.fixture(scope="module")
def test_gallery(retrieval_world):
    return retrieval_world.sample("test", 1000, seed=0)


def obj(shape, colour="red", size="small", cx=10.0, cy=10.0):
    return SceneObject(shape, colour, size, cx, cy, 5.0, 0.0)


def test_same_split_seed_index_same_image(retrieval_world):
    a = retrieval_world.sample("train", 6, seed=3)
    b = RetrievalWorld().sample("train", 6, seed=3)
    assert torch.equal(a.images, b.images) and a.captions == b.captions and a.scenes == b.scenes
    tail = retrieval_world.sample("train", 3, seed=3, start=3)
    assert torch.equal(tail.images, a.images[3:]) and tail.captions == a.captions[3:]
    other = retrieval_world.sample("train", 6, seed=4)
    assert all(not torch.equal(a.images[i], other.images[i]) for i in range(6))


def test_splits_share_no_image(retrieval_world):
    sets = {split: retrieval_world.sample(split, 40, seed=0) for split in RETRIEVAL_SPLITS}
    seen = {}
    for split, data in sets.items():
        for i in range(len(data)):
            key = data.images[i].numpy().tobytes()
            assert key not in seen, f"{split}[{i}] repeats {seen[key]}"
            seen[key] = (split, i)
    scenes = [s for data in sets.values() for s in data.scenes]
    assert len(set(scenes)) == len(scenes)


def test_scenes_images_and_captions_agree(test_gallery):
    data = test_gallery.subset(torch.arange(200))
    assert data.images.shape == (200, 3, 64, 64) and data.images.dtype == torch.uint8
    counts = [len(s.objects) for s in data.scenes]
    assert set(counts) == {2, 3}
    assert 0.3 < np.mean([s.word is not None for s in data.scenes]) < 0.7
    for scene, captions, claims in zip(data.scenes, data.captions, data.claims):
        shapes = [o.shape for o in scene.objects]
        assert len(set(shapes)) == len(shapes)  # distinct shapes, so "the star" is unambiguous
        assert len(captions) == len(set(captions)) == 5 and len(claims) == 5
        for text, claim in zip(captions, claims):
            assert describes(claim, scene), text
            assert all(o.shape in split_words(text) for o in claim.objects)
            assert (scene.word in split_words(text)) == (scene.word is not None) if scene.word else True
            assert claim.word == scene.word
        for a in scene.objects:  # objects never overlap
            for b in scene.objects:
                if a is not b:
                    assert np.hypot(a.cx - b.cx, a.cy - b.cy) >= a.radius + b.radius
    # Each image's five captions come from five different templates: they differ in length and detail.
    assert len({len(c.split()) for c in data.captions[0]}) >= 3


def test_vocabulary_and_caption_length_cover_every_caption(test_gallery):
    tokenizer = WordTokenizer(retrieval_vocabulary(), max_length=longest_caption_words() + 2)
    texts = [t for group in test_gallery.captions for t in group]
    assert tokenizer.unknown_words(texts) == []
    assert max(len(split_words(t)) for t in texts) <= longest_caption_words()
    assert set(WORDS) <= set(retrieval_vocabulary())


def test_relation_region_and_describes_by_hand():
    a, b = obj("star", cx=10, cy=30), obj("ring", "blue", "large", cx=40, cy=20)
    assert relation(a, b) == "left" and relation(b, a) == "right"  # |dx| = 30 > |dy| = 10
    c = obj("heart", cx=12, cy=60)
    assert relation(a, c) == "above" and relation(c, a) == "below"
    assert region(a, 64) == "on the left" and region(b, 64) == "at the top" and region(c, 64) == "in the bottom left"
    scene = Scene((a, b, c), "moon", 64)
    star, ring = ObjectClaim("star", "red", "small"), ObjectClaim("ring", "blue")
    assert describes(Claim((star, ring), ((0, "left", 1),)), scene)
    assert not describes(Claim((star, ring), ((0, "above", 1),)), scene)
    assert describes(Claim((ring, star), ((0, "right", 1),), count=3, word="moon"), scene)
    assert not describes(Claim((star, ring), count=2), scene)
    assert not describes(Claim((star, ring), word="star"), scene)
    assert not describes(Claim((ObjectClaim("star", "blue"),)), scene)
    assert describes(Claim((ObjectClaim("heart", region="in the bottom left"),)), scene)
    assert not describes(Claim((ObjectClaim("heart", region="on the left"),)), scene)
    # Two claimed objects must be two different scene objects.
    assert not describes(Claim((ObjectClaim("star"), ObjectClaim("star"))), Scene((a, b), None, 64))


def _brute_share(claims, scenes):
    ambiguous = sum(sum(describes(c, s) for s in scenes) > 1 for group in claims for c in group)
    return ambiguous / sum(len(g) for g in claims)


def test_ambiguity_measure_matches_a_double_loop(retrieval_world):
    data = retrieval_world.sample("val", 60, seed=1)
    # Add a near-copy of image 0 (same objects, word and layout): its captions and image 0's become ambiguous.
    scenes = [*data.scenes, data.scenes[0]]
    claims = [*data.claims, data.claims[0]]
    measured = ambiguous_caption_share(claims, scenes)
    assert measured["share"] == pytest.approx(_brute_share(claims, scenes))
    assert measured["ambiguous"] >= 10 and measured["own_image_missing"] == 0
    assert measured["max_images_per_caption"] >= 2
    # A caption that names only one common shape describes many images.
    loose = [[Claim((ObjectClaim(s.objects[0].shape),))] for s in data.scenes]
    assert ambiguous_caption_share(loose, data.scenes)["share"] == pytest.approx(_brute_share(loose, data.scenes))


def test_at_most_one_percent_of_test_captions_describe_two_images(test_gallery):
    measured = ambiguous_caption_share(test_gallery.claims, test_gallery.scenes)
    assert measured["captions"] == 5000 and measured["own_image_missing"] == 0
    assert measured["share"] <= 0.01


def test_parallel_generation_equals_sequential(retrieval_world):
    # sample() hands n >= 1000 to the process pool; its chunking is tested here on a small n.
    parallel = retrieval_world._sample_parallel("train", 30, seed=5, start=2, workers=2)
    sequential = retrieval_world.sample("train", 30, seed=5, start=2)
    assert torch.equal(parallel.images, sequential.images) and parallel.captions == sequential.captions
    assert parallel.claims == sequential.claims


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size": 16}, "image_size"), ({"min_objects": 1}, "min_objects"), ({"max_objects": 4}, "max_objects"),
    ({"small_radius": (5.0, 10.0)}, "small_radius"), ({"word_prob": 1.5}, "word_prob"),
    ({"captions_per_image": len(TEMPLATES) + 1}, "captions_per_image"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RetrievalWorldConfig(**kwargs)


def test_unknown_split_is_an_error(retrieval_world):
    with pytest.raises(ValueError, match="unknown retrieval split 'pretrain'"):
        retrieval_world.sample("pretrain", 2)
