"""AdPO: the sequence preference losses against float64 hand computations, the pairs (attack inside the ball,
y_w and y_l the reference's greedy outputs, reference log-probs), only vision parameters trained, the reference
never re-run, λ schedules, and an exact resume through the one loop."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from vlalign.data.vqa import MiniCaptions, MiniVQA
from vlalign.training.loop import fit
from vlalign.training.methods.adpo import AdPO, AdPOConfig, PromptedImages, sequence_preference_loss
from vlalign.training.train_config import TrainConfig

from cli_helpers import interrupt_at
from vlm_helpers import count_calls, prepared_with_reference, tiny_adpo, with_moved_vision

torch.set_num_threads(1)

#: A large radius so that the random tiny model's answers change under attack (pairs with y_l != y_w).
EPS = "48/255"


DATA = PromptedImages(MiniVQA(10, seed=3), MiniCaptions(4, seed=3))


def _method(loss: str = "dpo", **config) -> AdPO:
    return tiny_adpo(DATA, 5, loss, eps=config.pop("eps", EPS), **config)


def test_prompted_images_concatenate_parts_and_drop_answers():
    assert len(DATA) == 14
    item = DATA[12]
    assert set(item) == {"index", "pixels", "prompt"} and item["index"] == 12
    assert item["prompt"] == MiniCaptions(4, seed=3)[2]["prompt"]
    with pytest.raises(IndexError):
        DATA[14]


@pytest.fixture(scope="module")
def prepared():
    return prepared_with_reference(_method())


def test_pairs_are_the_reference_models_greedy_outputs_on_x_and_an_in_ball_x_adv(prepared):
    method, reference = prepared
    frozen = method.frozen
    x = frozen["pixels"].float() / 255
    x_adv = frozen["x_adv"]
    eps = 48 / 255
    assert float((x_adv - x).abs().max()) <= eps + 1e-6 and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    with torch.no_grad():
        moved = (reference.encode_image(x_adv) - reference.encode_image(x)).pow(2).sum(1)
        noise = torch.empty_like(x).uniform_(-eps, eps, generator=torch.Generator().manual_seed(0))
        random = (reference.encode_image((x + noise).clamp(0, 1)) - reference.encode_image(x)).pow(2).sum(1)
    assert float(moved.mean()) > float(random.mean())  # the attack beats random noise of the same size
    prompts = [DATA[i]["prompt"] for i in range(len(DATA))]
    assert frozen["prompts"] == prompts
    assert frozen["chosen"] == reference.generate(x, prompts, 4)
    assert frozen["rejected"] == reference.generate(x_adv, prompts, 4)
    assert int(frozen["differs"].sum()) >= 3
    with torch.no_grad():
        torch.testing.assert_close(frozen["reference_chosen"],
                                   reference.response_logprobs(x, prompts, frozen["chosen"]).total, atol=1e-5, rtol=0)
        torch.testing.assert_close(frozen["reference_rejected"],
                                   reference.response_logprobs(x_adv, prompts, frozen["rejected"]).total, atol=1e-5,
                                   rtol=0)


def test_at_initialization_dpo_is_log_2_and_ipo_the_squared_margin(prepared):
    method, _ = prepared
    batch = {"train": {"index": torch.arange(len(DATA))}, "step": 0, "seed": 0}
    out = method(batch)
    assert abs(float(out["preference"]) - math.log(2)) < 1e-5
    ipo = copy.copy(method)
    ipo.config = AdPOConfig(loss="ipo", beta=0.1, eps=EPS)
    assert abs(float(ipo(batch)["preference"]) - (1 / 0.2) ** 2) < 1e-3


def _hand_terms(method: AdPO, rows: list[int]):
    """Per row, in float64 and one example at a time: log π_θ(y_w|x), log π_θ(y_l|x_adv), their per-token means,
    and the token-mean NLL of y_w given x_adv over the rows."""
    frozen, model = method.frozen, method.model
    chosen, rejected, chosen_mean, rejected_mean, nll, tokens = [], [], [], [], 0.0, 0
    with torch.no_grad():
        for i in rows:
            x = frozen["pixels"][i: i + 1].float() / 255
            x_adv = frozen["x_adv"][i: i + 1]
            prompt = [frozen["prompts"][i]]
            w = model.response_logprobs(x, prompt, [frozen["chosen"][i]])
            lose = model.response_logprobs(x_adv, prompt, [frozen["rejected"][i]])
            adv = model.response_logprobs(x_adv, prompt, [frozen["chosen"][i]])
            chosen.append(float(w.total))
            rejected.append(float(lose.total))
            chosen_mean.append(float(w.total) / int(w.lengths))
            rejected_mean.append(float(lose.total) / int(lose.lengths))
            nll -= float(adv.total)
            tokens += int(adv.lengths)
    as64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return as64(chosen), as64(rejected), as64(chosen_mean), as64(rejected_mean), nll / tokens


@pytest.mark.parametrize("loss", ["dpo", "ipo", "kto", "simpo"])
def test_forward_matches_a_float64_hand_computation(prepared, loss):
    method, _ = prepared
    moved = with_moved_vision(method)
    moved.config = AdPOConfig(loss=loss, beta=0.5, simpo_beta=2.0, simpo_gamma=0.3, la_weight=0.7, eps=EPS)
    rows = [0, 2, 3, 5, 8, 11, 13]
    out = moved({"train": {"index": torch.tensor(rows)}, "step": 4, "seed": 0})
    pw, pl, mw, ml, nll = _hand_terms(moved, rows)
    rw = moved.frozen["reference_chosen"][rows].double()
    rl = moved.frozen["reference_rejected"][rows].double()
    h = (pw - rw) - (pl - rl)
    beta = 0.5
    if loss == "dpo":
        per_pair = F.softplus(-beta * h)
    elif loss == "ipo":
        per_pair = (h - 1 / (2 * beta)) ** 2
    elif loss == "simpo":
        per_pair = F.softplus(-(2.0 * (mw - ml) - 0.3))
    else:
        z = max(0.0, beta * float((pw - rw).mean()))
        desirable = 1 - torch.sigmoid(beta * (pw - rw) - z)
        undesirable = 1 - torch.sigmoid(z - beta * (pl - rl))
        per_pair = 0.5 * (desirable + undesirable)
    differs = moved.frozen["differs"][rows]
    expected = float(per_pair[differs].mean())
    assert abs(float(out["preference"]) - expected) < 2e-4 * max(1.0, abs(expected))
    assert abs(float(out["adversarial_lm"]) - nll) < 1e-4
    assert abs(float(out["loss"].detach()) - (expected + 0.7 * nll)) < 2e-4 * max(1.0, abs(expected + 0.7 * nll))
    assert abs(float(out["pairs_used"]) - float(differs.float().mean())) < 1e-6


def test_sequence_kto_equals_half_a_loss_per_desirable_and_undesirable_at_zero():
    zeros = torch.zeros(4, dtype=torch.float64)
    config = AdPOConfig(loss="kto", beta=1.0)
    value = sequence_preference_loss("kto", zeros, zeros, zeros, zeros, zeros, zeros, config, batch_mean=torch.mean)
    torch.testing.assert_close(value, torch.full_like(zeros, 0.5))
    with pytest.raises(ValueError, match="unknown AdPO loss"):
        sequence_preference_loss("orpo", zeros, zeros, zeros, zeros, zeros, zeros, config)


def test_pairs_without_preference_only_count_in_la(prepared):
    method, _ = prepared
    same = [i for i in range(len(DATA)) if not bool(method.frozen["differs"][i])]
    assert same, "the fixture's seeded pairs must include one whose attack left the answer unchanged"
    out = method({"train": {"index": torch.tensor(same)}, "step": 0, "seed": 0})
    assert float(out["preference"]) == 0.0 and float(out["pairs_used"]) == 0.0
    assert float(out["adversarial_lm"]) > 0


def test_lambda_schedules():
    constant = AdPOConfig(la_weight=0.5)
    assert constant.la_at(0) == constant.la_at(99) == 0.5
    linear = AdPOConfig(la_weight=0.5, la_schedule="linear", la_weight_start=2.0, schedule_steps=11)
    assert [round(linear.la_at(s), 6) for s in (0, 5, 10, 20)] == [2.0, 1.25, 0.5, 0.5]
    cosine = AdPOConfig(la_weight=0.0, la_schedule="cosine", la_weight_start=1.0, schedule_steps=3)
    assert [round(cosine.la_at(s), 6) for s in (0, 1, 2)] == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="schedule_steps"):
        AdPOConfig(la_schedule="linear")
    with pytest.raises(ValueError, match="loss must be one of"):
        AdPOConfig(loss="orpo")
    with pytest.raises(ValueError, match="beta"):
        AdPOConfig(beta=0)


LOOP = TrainConfig(steps=4, batch_size=4, lr=1e-3, checkpoint_every=2, log_every=1, seed=3)


#: Calls during precompute (3 batches of 5 images) and 4 steps: pairs on the reference generate y_w and y_l and
#: attack once per batch, never in a step; online pairs generate y_w once per batch, then attack and generate y_l
#: in every step.
CALLS = {"reference": {"generate": 6, "attack": 3}, "policy": {"generate": 3 + 4, "attack": 4}}


@pytest.mark.parametrize("attack_on", ["reference", "policy"])
def test_fit_trains_only_the_used_vision_parameters_and_attacks_where_configured(monkeypatch, attack_on):
    method = _method(la_weight=0.5, attack_on=attack_on)
    model = method.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = {"generate": 0, "attack": 0}
    count_calls(monkeypatch, type(model), "generate", calls, "generate")
    count_calls(monkeypatch, type(method.attack), "__call__", calls, "attack")
    result = fit(method, LOOP, progress=False)
    assert method.precompute_calls == 1 and calls == CALLS[attack_on]
    trained = result.model
    assert trained is model and not any(p.requires_grad for p in model.parameters())
    unused = {f"vision.{n}" for n in model.unused_vision_parameters()}
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    vision = {f"vision.{n}" for n, _ in model.vision.named_parameters()} - unused
    assert changed and changed <= vision
    assert not any(k.startswith(("projector.", "language_model.")) for k in changed)
    assert not changed & unused
    if attack_on == "policy":  # the reference parameters kept for scoring are the initial ones
        initial = {k[len("vision."):]: v for k, v in before.items() if k.startswith("vision.")}
        assert all(torch.equal(v, initial[k]) for k, v in method.frozen["reference_vision"].items())
    # a second fit on the same method reuses the pairs
    fit(method, LOOP, progress=False)
    assert method.precompute_calls == 1


@pytest.mark.parametrize("attack_on", ["reference", "policy"])
def test_a_resumed_adpo_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path, monkeypatch, attack_on):
    """Also with online pairs: every step's attack starts depend on (seed, step, image) alone."""
    loop = TrainConfig(steps=4, batch_size=4, lr=1e-3, checkpoint_every=2, log_every=1, averaging="bma")
    method = lambda: _method(loss="kto", la_schedule="linear", schedule_steps=4, attack_on=attack_on)  # noqa: E731
    straight = fit(method(), loop, tmp_path / "a", progress=False)
    restore = interrupt_at(monkeypatch, AdPO, 3)
    with pytest.raises(KeyboardInterrupt, match="interrupted at step 3"):
        fit(method(), loop, tmp_path / "b", progress=False)
    restore()
    resumed = fit(method(), loop, tmp_path / "b", progress=False)
    assert resumed.start_step == 2
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert (tmp_path / "a" / "metrics.csv").read_text() == (tmp_path / "b" / "metrics.csv").read_text()


def test_forward_before_prepare_is_a_clear_error():
    with pytest.raises(RuntimeError, match="prepare"):
        _method()({"train": {"index": torch.tensor([0])}, "step": 0, "seed": 0})
