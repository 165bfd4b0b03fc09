"""Attacks on generative VLMs: the response objective, APGD/PGD/embedding attacks, robust and targeted evaluation."""

from __future__ import annotations

import pytest
import torch

from vlalign.attacks import EmbeddingObjective, ResponseObjective, build_attack
from vlalign.attacks.threat_model import lp_norms
from vlalign.evaluation.vlm_robust import VLMRobustEvaluation, robust_evaluate_vlm, targeted_success

from vlm_helpers import images, tiny_mini_vlm

PROMPTS = ["what shape is this?", "what colour is it?", "how many shapes are there?", "where is the shape?"]


@pytest.fixture(scope="module")
def model():
    return tiny_mini_vlm(seed=1)


@pytest.fixture(scope="module")
def clean(model):
    """Images, the model's own greedy answers (every question starts clean-correct), and whether each answer is
    complete (ends in <eos>: a longer budget gives the same answer) rather than cut off at 8 tokens."""
    pixels = images(4, seed=10)
    with torch.no_grad():
        answers = model.generate(pixels, PROMPTS, max_new_tokens=8)
        longer = model.generate(pixels, PROMPTS, max_new_tokens=12)
    return pixels, answers, torch.tensor([a == b for a, b in zip(answers, longer)])


def test_response_objective_is_the_sequence_nll_and_flags_greedy_changes(model, clean):
    pixels, answers, finished = clean
    objective = ResponseObjective(model, PROMPTS, answers)
    with torch.no_grad():
        value = objective(pixels)
        scores = model.response_logprobs(pixels, PROMPTS, answers)
    torch.testing.assert_close(value.loss, -scores.total)
    assert torch.equal(value.fooled, ~finished)  # the model's own complete answers: not fooled
    targeted = ResponseObjective(model, PROMPTS, answers, targeted=True)
    with torch.no_grad():
        value_t = targeted(pixels)
    torch.testing.assert_close(value_t.loss, scores.total)
    assert torch.equal(value_t.fooled, finished)  # already producing the "target"
    sub = objective.subset(torch.tensor([2, 0]))
    with torch.no_grad():
        torch.testing.assert_close(sub(pixels[[2, 0]]).loss, value.loss[[2, 0]])


@pytest.mark.parametrize("name", ["pgd", "apgd-ce"])
def test_untargeted_attacks_raise_the_nll_inside_the_ball(model, clean, name):
    pixels, answers, _ = clean
    eps = 8 / 255
    objective = ResponseObjective(model, PROMPTS, answers)
    training = model.training
    result = build_attack(name, eps, steps=10)(objective, pixels, seed=0)
    assert float(lp_norms(result.adversarial - pixels, "linf").max()) <= eps + 1e-6
    assert float(result.adversarial.min()) >= 0 and float(result.adversarial.max()) <= 1
    with torch.no_grad():
        before, after = objective(pixels).loss, objective(result.adversarial).loss
    assert float(after.sum()) > float(before.sum())
    assert model.training == training and all(p.requires_grad for p in model.parameters())


def test_apgd_dlr_needs_class_logits(model, clean):
    pixels, answers, _ = clean
    with pytest.raises(TypeError, match="logit objective"):
        build_attack("apgd-dlr", 4 / 255, steps=5)(ResponseObjective(model, PROMPTS, answers), pixels)


def test_targeted_attack_lowers_the_target_nll(model, clean):
    pixels, answers, _ = clean
    targets = ["moon", "blue", "4", "top left"]
    objective = ResponseObjective(model, PROMPTS, targets, targeted=True)
    result = build_attack("pgd", 16 / 255, steps=10)(objective, pixels, seed=0)
    with torch.no_grad():
        before = model.response_logprobs(pixels, PROMPTS, targets).total
        after = model.response_logprobs(result.adversarial, PROMPTS, targets).total
    assert float(after.sum()) > float(before.sum())


def test_embedding_attack_moves_the_features_the_decoder_reads(model, clean):
    pixels, answers, _ = clean
    attack = build_attack("embedding", 8 / 255, steps=5)
    result = attack(ResponseObjective(model, PROMPTS, answers), pixels, seed=0)
    assert result.fooled is not None and result.loss.shape == (4,)
    reference = EmbeddingObjective.from_images(model, pixels)
    with torch.no_grad():
        moved = reference(result.adversarial).loss
    assert bool((moved > 0).all())
    direct = attack(reference, pixels, seed=0)
    assert float(lp_norms(direct.adversarial - pixels, "linf").max()) <= 8 / 255 + 1e-6


def test_robust_evaluation_vqa(model, clean):
    pixels, answers, _ = clean
    result = robust_evaluate_vlm(model, pixels, PROMPTS, [[a] for a in answers], "vqa", "apgd-ce,pgd,embedding",
                                 [2 / 255, 16 / 255], steps=4, question_types=["shape", "colour", "count", "where"],
                                 max_new_tokens=8)
    assert isinstance(result, VLMRobustEvaluation)
    assert torch.equal(result.clean_scores, torch.ones(4))  # the same greedy decoding: every answer is correct
    metrics = result.metrics()
    assert set(metrics["robust"]) == {"apgd-ce", "pgd", "embedding"} and set(metrics["worst_case"]) == {"2/255", "16/255"}
    for e in result.eps:
        worst = result.worst_case_scores(e)
        for by_eps in result.scores.values():
            assert bool((worst <= by_eps[e]).all())
    assert metrics["worst_case"]["16/255"] <= metrics["clean"]
    assert set(metrics["by_type"]["clean"]) == {"shape", "colour", "count", "where", "all"}
    assert "steps" in metrics["checks"] and metrics["checks"]["nonfinite_gradient_samples"] == 0
    assert len(result.predictions["pgd"]["16/255"]) == 4


def test_robust_evaluation_caption_scores_cider(model):
    pixels = images(3, seed=11)
    references = [["a red circle in the top left", "there is a red circle at the top left"],
                  ["a blue star in the bottom right"], ["a green ring in the top right"]]
    result = robust_evaluate_vlm(model, pixels, ["describe the image."] * 3, references, "caption", "pgd", [8 / 255],
                                 steps=2, steps_check=False, max_new_tokens=6)
    metrics = result.metrics()
    assert metrics["metric"] == "CIDEr-D" and metrics["settings"]["attacked images"] == 3
    assert result.clean_scores.shape == (3,) and bool((result.clean_scores >= 0).all())


def test_robust_evaluation_rejects_attacks_that_need_class_logits(model, clean):
    pixels, answers, _ = clean
    with pytest.raises(ValueError, match="do not apply to a generative VLM"):
        robust_evaluate_vlm(model, pixels, PROMPTS, [[a] for a in answers], "vqa", "apgd-t", [4 / 255])
    with pytest.raises(ValueError, match="task must be"):
        robust_evaluate_vlm(model, pixels, PROMPTS, [[a] for a in answers], "retrieval", "pgd", [4 / 255])


def test_targeted_success_counts_images_answering_the_target(model, clean):
    pixels, answers, _ = clean
    rate, predictions = targeted_success(model, pixels, PROMPTS, answers, "pgd", 2 / 255, steps=2)
    # Targeting the answers the model already gives: a tiny step cannot move every one away from them.
    assert len(predictions) == 4 and 0 <= rate <= 1
    with pytest.raises(ValueError, match="white-box bounded"):
        targeted_success(model, pixels, PROMPTS, answers, "square", 4 / 255)
