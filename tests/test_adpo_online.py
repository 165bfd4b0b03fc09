"""AdPO with online pairs (``attack_on: policy``): every step attacks the current encoder, y_l is the current
model's greedy answer on that x_adv, log π_ref(y_l|x_adv) comes from the reference vision parameters swapped in;
checked against a frozen copy of the initial model and a float64 hand computation (what runs where, and the exact
resume, are tested with the offline pairs in test_adpo.py)."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from vlalign.data.vqa import MiniCaptions, MiniVQA
from vlalign.training.methods.adpo import AdPO, AdPOConfig, PromptedImages

from vlm_helpers import prepared_with_reference, tiny_adpo, tiny_mini_vlm, with_moved_vision

torch.set_num_threads(1)

EPS = "48/255"
DATA = PromptedImages(MiniVQA(8, seed=5), MiniCaptions(3, seed=5))


def _method(loss: str = "dpo", **config) -> AdPO:
    return tiny_adpo(DATA, 4, loss, eps=EPS, attack_on=config.pop("attack_on", "policy"), **config)


@pytest.fixture(scope="module")
def prepared():
    return prepared_with_reference(_method())


def test_precompute_keeps_y_w_and_its_reference_score_not_an_attack(prepared):
    method, reference = prepared
    frozen = method.frozen
    x = frozen["pixels"].float() / 255
    prompts = [DATA[i]["prompt"] for i in range(len(DATA))]
    assert "x_adv" not in frozen and "rejected" not in frozen and frozen["attack_on"] == "policy"
    assert frozen["chosen"] == reference.generate(x, prompts, 4)
    with torch.no_grad():
        torch.testing.assert_close(frozen["reference_chosen"],
                                   reference.response_logprobs(x, prompts, frozen["chosen"]).total, atol=1e-5, rtol=0)


def test_reference_features_swap_in_the_initial_parameters_for_one_call_only(prepared):
    method, reference = prepared
    moved = with_moved_vision(method)
    x = torch.rand(3, 3, moved.model.image_size, moved.model.image_size, generator=torch.Generator().manual_seed(2))
    before = {k: v.clone() for k, v in moved.model.state_dict().items()}
    with torch.no_grad():
        swapped = moved.reference_image_features(x)
        torch.testing.assert_close(swapped, reference.image_features(x), atol=1e-6, rtol=0)
        assert not torch.allclose(moved.model.image_features(x), swapped, atol=1e-3)
    assert all(torch.equal(v, before[k]) for k, v in moved.model.state_dict().items())


def test_online_forward_matches_the_moved_model_and_the_reference_in_float64(prepared):
    method, reference = prepared
    moved = with_moved_vision(method)
    moved.config = AdPOConfig(loss="dpo", beta=0.5, la_weight=0.7, eps=EPS, attack_steps=3, max_new_tokens=4,
                              attack_on="policy")
    captured = {}
    real = moved._online_pairs

    def capture(*args):
        captured["pairs"] = real(*args)
        return captured["pairs"]

    moved._online_pairs = capture
    rows = [0, 1, 3, 4, 6, 9, 10]
    out = moved({"train": {"index": torch.tensor(rows)}, "step": 5, "seed": 2})
    x_adv, rejected, reference_rejected = captured["pairs"]
    frozen, model = moved.frozen, moved.model
    x = frozen["pixels"][rows].float() / 255
    prompts = [frozen["prompts"][i] for i in rows]
    chosen = [frozen["chosen"][i] for i in rows]
    eps = 48 / 255
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    with torch.no_grad():
        target = reference.encode_image(x)  # φ_ref(x)
        attacked = (model.encode_image(x_adv) - target).pow(2).sum(1)
        noise = torch.empty_like(x).uniform_(-eps, eps, generator=torch.Generator().manual_seed(0))
        random = (model.encode_image((x + noise).clamp(0, 1)) - target).pow(2).sum(1)
    assert float(attacked.mean()) > float(random.mean())  # the attack on the *current* encoder beats noise
    assert rejected == model.generate(x_adv, prompts, 4)  # y_l: the current model's answer on x_adv
    pw, pl, rl, nll, tokens = [], [], [], 0.0, 0
    with torch.no_grad():
        for k, i in enumerate(rows):
            one, adv, prompt = x[k: k + 1], x_adv[k: k + 1], [prompts[k]]
            pw.append(float(model.response_logprobs(one, prompt, [chosen[k]]).total))
            pl.append(float(model.response_logprobs(adv, prompt, [rejected[k]]).total))
            rl.append(float(reference.response_logprobs(adv, prompt, [rejected[k]]).total))
            la = model.response_logprobs(adv, prompt, [chosen[k]])
            nll -= float(la.total)
            tokens += int(la.lengths)
    as64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    torch.testing.assert_close(reference_rejected.double(), as64(rl), atol=1e-4, rtol=0)
    rw = frozen["reference_chosen"][rows].double()
    h = (as64(pw) - rw) - (as64(pl) - as64(rl))
    differs = torch.tensor([w != lose for w, lose in zip(chosen, rejected)])
    assert differs.any(), "the seeded attack must change some answers of the moved model"
    expected = float(F.softplus(-0.5 * h)[differs].mean())
    assert abs(float(out["preference"]) - expected) < 2e-4 * max(1.0, abs(expected))
    assert abs(float(out["adversarial_lm"]) - nll / tokens) < 1e-4
    assert abs(float(out["pairs_used"]) - float(differs.float().mean())) < 1e-6


def test_pairs_of_the_other_attack_mode_are_refused(prepared):
    method, _ = prepared
    offline = AdPO(tiny_mini_vlm(seed=0), DATA, AdPOConfig(eps=EPS, attack_steps=3, max_new_tokens=4))
    offline.frozen = method.frozen
    with pytest.raises(ValueError, match="computed for attack_on .policy. with the .embedding. objective"):
        offline.prepare(torch.device("cpu"))
    with pytest.raises(ValueError, match="attack_on must be one of"):
        AdPOConfig(attack_on="decoder")


@pytest.mark.parametrize("attack_on", ["reference", "policy"])
def test_the_response_objective_attacks_the_clean_answer(attack_on):
    """``attack_objective: response``: x_adv makes y_w less likely under the attacked model than random noise of the
    same size does (the reference's pairs once, or the current model's inside a step)."""
    method, reference = prepared_with_reference(_method(attack_on=attack_on, attack_objective="response"))
    frozen = method.frozen
    rows = list(range(len(DATA)))
    x = frozen["pixels"].float() / 255
    prompts, chosen = frozen["prompts"], frozen["chosen"]
    if attack_on == "reference":
        x_adv, attacked = frozen["x_adv"], reference
    else:
        moved = with_moved_vision(method)
        captured = {}
        real = moved._online_pairs
        moved._online_pairs = lambda *args: captured.setdefault("pairs", real(*args))
        moved({"train": {"index": torch.tensor(rows)}, "step": 1, "seed": 4})
        x_adv, attacked = captured["pairs"][0], moved.model
    eps = 48 / 255
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    noise = torch.empty_like(x).uniform_(-eps, eps, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        nll_adv = -attacked.response_logprobs(x_adv, prompts, chosen).total
        nll_noise = -attacked.response_logprobs((x + noise).clamp(0, 1), prompts, chosen).total
    assert float(nll_adv.mean()) > float(nll_noise.mean())
    with pytest.raises(ValueError, match="attack_objective must be one of"):
        AdPOConfig(attack_objective="logits")
