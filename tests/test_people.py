"""The people world, its preference data, the embedding-level people metrics and the shipped people MiniCLIP."""

import json
import math

import pytest
import torch

from vlalign.data.people import (
    ACTIVITIES, OCCLUDING_ACTIVITIES, STEREOTYPE, PeopleConfig, PeopleSet, PeopleWorld, attribute_caption, attribute_prompts,
    flip_preference_data, neutral_caption, neutral_prompts, people_vocabulary,
)
from vlalign.evaluation.people import PeopleTextEmbeddings, predict_activity, predict_attribute
from vlalign.models.tokenizer import WordTokenizer

K = len(ACTIVITIES)


@pytest.fixture(scope="module")
def world():
    return PeopleWorld()


def test_captions_and_vocabulary():
    assert K >= 8 and len(set(ACTIVITIES)) == K
    assert attribute_caption(0, 1) == "the A-person is kicking a ball"
    assert attribute_caption(1, 1) == "the B-person is kicking a ball"
    assert neutral_caption(1) == "the person is kicking a ball"
    prompts = attribute_prompts()
    assert len(prompts) == 2 * K and prompts[K + 3] == attribute_caption(1, 3)
    tokenizer = WordTokenizer(people_vocabulary())
    assert tokenizer.unknown_words(list(prompts + neutral_prompts())) == []
    # A- and B-prompts differ in exactly one token, the attribute.
    ids = tokenizer(list(prompts))["input_ids"]
    assert all(int((ids[k] != ids[K + k]).sum()) == 1 for k in range(K))


def test_seed_deterministic_and_index_pure(world):
    a = world.sample("test", 40, seed=3)
    b = world.sample("test", 40, seed=3)
    assert torch.equal(a.images.images, b.images.images) and a.images.captions == b.images.captions
    tail = world.sample("test", 8, seed=3, start=32)
    assert torch.equal(tail.images.images, a.images.images[32:])
    assert torch.equal(tail.attributes, a.attributes[32:])
    assert not torch.equal(world.sample("test", 40, seed=4).images.images, a.images.images)
    assert not torch.equal(world.sample("train", 40, seed=3).images.images, a.images.images)


def test_parallel_rendering_is_identical(world):
    parallel = world.sample("pretrain", 2000, seed=5, workers=2)
    for start in (0, 990, 1960):  # both chunks and the boundary between them
        serial = world.sample("pretrain", 40, seed=5, start=start)
        assert torch.equal(serial.images.images, parallel.images.images[start:start + 40])
        assert torch.equal(serial.attributes, parallel.attributes[start:start + 40])
        assert serial.images.captions == parallel.images.captions[start:start + 40]


def test_test_split_is_balanced_per_activity(world):
    people = world.sample("test", 4 * 2 * K, seed=0)
    for k in range(K):
        attrs = people.attributes[people.activities == k]
        assert int((attrs == 0).sum()) == int((attrs == 1).sum()) == 4
    assert people.images.images.shape[1:] == (3, 64, 64)
    assert all(c == neutral_caption(int(k)) for c, k in zip(people.images.captions, people.activities))


@pytest.mark.parametrize("bias", [0.8, 0.5])
def test_pretraining_correlation_follows_the_bias_knob(bias):
    n = 800
    people = PeopleWorld(PeopleConfig(bias=bias)).sample("pretrain", n, seed=0)
    stereotyped = people.attributes == torch.tensor(STEREOTYPE)[people.activities]
    # Binomial standard error at most sqrt(0.25 / 800) = 1.8 points; allow 4.
    assert abs(float(stereotyped.float().mean()) - bias) < 0.07
    named = [c != neutral_caption(int(k)) for c, k in zip(people.images.captions, people.activities)]
    for caption, k, a, hidden, is_named in zip(people.images.captions, people.activities, people.attributes,
                                               people.occluded, named):
        if is_named and not hidden:
            assert caption == attribute_caption(int(a), int(k))


def test_attribute_changes_only_the_figure(world):
    # Same scene (stream, seed, index), two body styles: the images differ, but only in a small region.
    for activity in range(K):
        a = world.render(23, 0, 7, activity, 0).astype(int)
        b = world.render(23, 0, 7, activity, 1).astype(int)
        changed = (abs(a - b).sum(-1) > 30).mean()
        assert 0.01 < changed < 0.15, (ACTIVITIES[activity], changed)
    # Different activities of the same scene differ by more than the body style does.
    assert (abs(world.render(23, 0, 7, 0, 0).astype(int) - world.render(23, 0, 7, 3, 0).astype(int)).sum(-1) > 30).mean() > 0.02


def test_hidden_torso_hides_the_style_and_captions_guess_the_stereotype():
    world = PeopleWorld()
    for name in OCCLUDING_ACTIVITIES:
        k = ACTIVITIES.index(name)
        hidden = [world.render(21, 0, 11, k, a, occluded=True) for a in (0, 1)]
        assert (hidden[0] == hidden[1]).all()  # the same scene, pixel for pixel, whatever the style
        assert not (world.render(21, 0, 11, k, 0) == world.render(21, 0, 11, k, 1)).all()
    with pytest.raises(ValueError, match="hide the body"):
        world.render(21, 0, 0, ACTIVITIES.index("kicking a ball"), 0, occluded=True)
    people = PeopleWorld(PeopleConfig(occlusion_prob=1.0, attribute_caption_prob=1.0)).sample("pretrain", 320, seed=2)
    for caption, k, hidden in zip(people.images.captions, people.activities.tolist(), people.occluded.tolist()):
        assert hidden == (ACTIVITIES[k] in OCCLUDING_ACTIVITIES)
        if hidden:  # an annotator who cannot see the style names the activity's stereotyped one
            assert caption == attribute_caption(STEREOTYPE[k], k)


def test_reporting_bias_names_counter_stereotypical_figures_more_often():
    people = PeopleWorld(PeopleConfig(occlusion_prob=0.0)).sample("pretrain", 1600, seed=0)
    stereo = people.attributes == torch.tensor(STEREOTYPE)[people.activities]
    named = torch.tensor([c != neutral_caption(int(k)) for c, k in zip(people.images.captions, people.activities)])
    # Defaults: 0.5 for stereotypical figures (1280 expected), 0.9 for counter-stereotypical ones (320).
    assert abs(float(named[stereo].float().mean()) - 0.5) < 0.06
    assert abs(float(named[~stereo].float().mean()) - 0.9) < 0.07


def test_flip_preference_data(world):
    people = world.sample("train", 48, seed=1)
    pref, reg = flip_preference_data(people, 32)
    prompts = pref.prompts
    for i in range(32):
        k, a = int(people.activities[i]), int(people.attributes[i])
        assert prompts[int(pref.chosen[i])] == attribute_caption(1 - a, k)
        assert prompts[int(pref.rejected[i])] == attribute_caption(a, k)
    assert len(reg) == 16 and reg.prompts == neutral_prompts()
    assert torch.equal(reg.images, people.images.images[32:]) and torch.equal(reg.labels, people.activities[32:])
    with pytest.raises(ValueError, match="n_pref"):
        flip_preference_data(people, 48)
    # The paper's choice: the regularization term over the preference images themselves.
    same_pref, same_reg = flip_preference_data(people, 48, regularize_on="same")
    assert torch.equal(same_reg.images, people.images.images) and torch.equal(same_reg.labels, people.activities)
    assert torch.equal(same_pref.images, same_reg.images) and same_reg.prompts == neutral_prompts()
    assert torch.equal(flip_preference_data(people, 32, regularize_on="same")[0].chosen, pref.chosen)
    with pytest.raises(ValueError, match=r"n_pref must be in \[1, 48\], got 49"):
        flip_preference_data(people, 49, regularize_on="same")
    with pytest.raises(ValueError, match="regularize_on"):
        flip_preference_data(people, 32, regularize_on="other")


def test_config_and_split_errors(world):
    with pytest.raises(ValueError, match="bias"):
        PeopleConfig(bias=1.5)
    with pytest.raises(ValueError, match="max_height"):
        PeopleConfig(max_height=60)
    with pytest.raises(ValueError, match="unknown people split"):
        world.sample("clean", 4)
    with pytest.raises(ValueError, match="attribute"):
        world.render(23, 0, 0, 0, 2)


def test_predictions_from_embeddings():
    # Basis vectors: e_k = activity k, e_K = style A, e_{K+1} = style B.
    dim = K + 2
    eye = torch.eye(dim)
    attribute = torch.stack([torch.stack([eye[k] + eye[K + a] for k in range(K)]) for a in range(2)])
    text = PeopleTextEmbeddings(torch.nn.functional.normalize(attribute, dim=-1), eye[:K])
    images = torch.stack([eye[2] + 0.5 * eye[K], eye[5] + 0.5 * eye[K + 1], eye[5] + 0.5 * eye[K]])
    activities = torch.tensor([2, 5, 5])
    assert predict_activity(images, text).tolist() == [2, 5, 5]
    assert predict_attribute(images, activities, text).tolist() == [0, 1, 0]
    # The attribute is judged with the prompts of the image's *own* activity.
    assert predict_attribute(images, torch.tensor([3, 3, 3]), text).tolist() == [0, 1, 0]


# ------------------------------------------------------------------------------------ shipped people model
N_FRESH = 1600
FRESH_SEED = 4242  # never used by pretraining (its own stream) nor by the recorded evaluation (seed 1)


@pytest.fixture(scope="module")
def measured(world):
    from vlalign.evaluation.people import evaluate_people_model
    from vlalign.models.loading import load_model

    return evaluate_people_model(load_model("mini-people"), world.sample("test", N_FRESH, FRESH_SEED))


def test_shipped_people_model_meets_targets(measured):
    assert measured["activity_accuracy"] >= 0.85
    assert measured["original_rate"] >= 0.75          # it recognizes the attribute …
    assert measured["max_abs_skew"] >= 0.15           # … but its predictions lean with the activity
    assert measured["stereotype_skew"] > 0.03          # towards the pretraining stereotype
    assert measured["retrieval_stereotype_share"] >= 0.7  # neutral prompts retrieve stereotypical figures first


def test_shipped_people_model_matches_recorded_metrics(measured):
    from vlalign.models.loading import embedded_people_dir

    recorded = json.loads((embedded_people_dir() / "metrics.json").read_text())
    for key in ("activity_accuracy", "mean_abs_skew", "stereotype_skew"):
        # 1600 fresh images: standard errors of at most 1.3 points overall and 3.5 per activity.
        assert abs(measured[key] - recorded[key]) <= 0.05, (key, measured[key], recorded[key])
    assert abs(measured["original_rate"] - recorded["attribute_accuracy"]) <= 0.05


def test_swap_attribute_renders_counterfactual_twins(world):
    people = world.sample("test", 64, seed=3)
    twins = world.sample("test", 64, seed=3, swap_attribute=True)
    assert torch.equal(twins.attributes, 1 - people.attributes)
    assert torch.equal(twins.activities, people.activities) and torch.equal(twins.occluded, people.occluded)
    assert twins.images.captions == people.images.captions
    same = (twins.images.images == people.images.images).flatten(1).all(1)
    # A hidden torso hides the style: that twin is the same picture. Every other twin differs, but only in the figure.
    assert torch.equal(same, people.occluded)
    changed = (twins.images.images.int() - people.images.images.int()).abs().sum(1).gt(30).flatten(1).float().mean(1)
    assert float(changed[~people.occluded].max()) < 0.15
    # Twins of twins are the originals; the pretraining split swaps the drawn style too.
    pre, pre_twins = world.sample("pretrain", 32, seed=4), world.sample("pretrain", 32, seed=4, swap_attribute=True)
    assert torch.equal(pre_twins.attributes, 1 - pre.attributes)


def test_neutral_score_spread_by_hand():
    from vlalign.evaluation.people import neutral_score_spread
    from vlalign.data.image_set import ImageSet

    # Two activities, D = 2; activity 0's neutral prompt is e0. Style A figures score 3 and 5, style B 1 and 1.
    emb = torch.tensor([[3.0, 0], [5.0, 0], [1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0], [0, 1.0], [0, 1.0]])
    acts = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    attrs = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    people = PeopleSet(ImageSet(images=torch.zeros(8, 3, 4, 4, dtype=torch.uint8), labels=acts, classnames=ACTIVITIES),
                       attrs, torch.tensor([False] * 7 + [True]))
    neutral = torch.zeros(K, 2)
    neutral[0, 0] = 1.0
    neutral[1, 1] = 1.0
    text = PeopleTextEmbeddings(torch.zeros(2, K, 2), neutral)
    out = neutral_score_spread(emb, people, text, scale=2.0)
    std_a = float(torch.tensor([6.0, 10.0]).std())  # scaled scores of style A
    assert out["within_style_std"][0] == pytest.approx(std_a / 2) and out["style_gap"][0] == pytest.approx(6.0)
    # Activity 1 has one visible style-B figure (the other is hidden): not enough for a spread.
    assert math.isnan(out["within_style_std"][1]) and math.isnan(out["style_gap"][1])
