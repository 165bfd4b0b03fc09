"""The attack contract, checked on every registered attack, and each attack against an independent reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlalign.attacks import (
    ATTACKS, CaptionLikelihoodObjective, EmbeddingObjective, LogitObjective, LossObjective, RetrievalObjective,
    ZeroShotObjective, build_attack, format_eps, parse_eps,
)
from vlalign.attacks.apgd import APGD, apgd_checkpoints
from vlalign.attacks.base import attack_mode, select_over_restarts
from vlalign.attacks.registry import is_bounded, split_attack_names
from vlalign.attacks.threat_model import lp_norms, project
from vlalign.attacks.losses import dlr_loss, logit_loss, margin_loss, targeted_dlr_loss
from vlalign.attacks.pgd import PGD
from vlalign.attacks.square import Square, square_fraction
from vlalign.data.shapes import SHAPE_NAMES

BOUNDED = sorted(name for name in ATTACKS if is_bounded(name))


def _objective(model, n: int, seed: int = 0, loss: str = "ce") -> LogitObjective:
    """Logits against random frozen candidates: only the image tower runs."""
    g = torch.Generator().manual_seed(seed)
    candidates = F.normalize(torch.randn(len(SHAPE_NAMES), model.embed_dim, generator=g), dim=-1)
    return LogitObjective(model, candidates, torch.randint(0, len(SHAPE_NAMES), (n,), generator=g), loss=loss)


def _images(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    # Pixels sitting on the box's faces: the projection must not push them out.
    x[:, 0, :4] = 0.0
    x[:, 1, -4:] = 1.0
    return x


# ----------------------------------------------------------------------------------------------- contract

@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(BOUNDED), eps=st.floats(min_value=1e-3, max_value=0.3), n=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_every_attack_stays_in_the_eps_ball_and_the_image_box(tiny_mini_clip, name, eps, n, seed):
    x = _images(n, 32, seed)
    attack = build_attack(name, eps, steps=2, queries=4, surrogate=tiny_mini_clip)
    objective = ZeroShotObjective(tiny_mini_clip, SHAPE_NAMES, torch.arange(n) % len(SHAPE_NAMES))
    adversarial = attack(objective, x, seed=seed).adversarial
    assert adversarial.shape == x.shape
    assert float(adversarial.min()) >= 0 and float(adversarial.max()) <= 1
    # Float32 rounding of x + δ may overshoot ε by an ulp, never by more.
    assert float(lp_norms(adversarial - x, attack.norm).max()) <= eps * (1 + 1e-5) + 1e-6


@settings(max_examples=40, deadline=None)
@given(eps=st.floats(1e-4, 1.0), norm=st.sampled_from(["linf", "l2"]), seed=st.integers(0, 2**16),
       scale=st.floats(0.01, 100.0))
def test_projection_lands_in_the_ball_and_box(eps, norm, seed, scale):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 3, 8, 8, generator=g)
    far = x + scale * torch.randn(4, 3, 8, 8, generator=g)
    projected = project(far, x, eps, norm)
    assert float(projected.min()) >= 0 and float(projected.max()) <= 1
    assert float(lp_norms(projected - x, norm).max()) <= eps * (1 + 1e-5) + 1e-6
    # Points already inside are fixed points.
    inside = project(projected, x, eps, norm)
    assert torch.allclose(inside, projected, atol=1e-6)


def test_typographic_attack_writes_a_wrong_class_and_stays_in_the_box(world, tiny_mini_clip):
    images = world.sample("clean", 4, 5)
    x = images.pixels()
    objective = ZeroShotObjective(tiny_mini_clip, images.classnames, images.labels)
    attack = build_attack("typographic")
    result = attack(objective, x, seed=3)
    assert float(result.adversarial.min()) >= 0 and float(result.adversarial.max()) <= 1
    # Rendered output is 8-bit.
    assert torch.equal(result.adversarial * 255, (result.adversarial * 255).round())
    written = torch.tensor(result.history["written"])
    assert (written != images.labels).all()
    assert torch.equal(attack(objective, x, seed=3).adversarial, result.adversarial)
    assert (result.adversarial - x).abs().amax() > 0.2


def test_model_is_in_eval_mode_during_the_attack_and_restored_after(tiny_mini_clip):
    model = tiny_mini_clip.train()
    model.text.head.weight.requires_grad_(False)
    seen = []

    def loss_fn(pixels, index):
        seen.append((model.training, any(p.requires_grad for p in model.parameters())))
        return model.encode_image(pixels).sum(1)

    objective = LossObjective(model, loss_fn, n=2)
    PGD(2 / 255, steps=3)(objective, _images(2, 32, 0))
    assert seen and all(not training and not grads for training, grads in seen)
    assert model.training
    assert not model.text.head.weight.requires_grad
    assert all(p.requires_grad for name, p in model.named_parameters() if name != "text.head.weight")


def test_modes_of_submodules_survive_attacks_and_evaluations(tiny_mini_clip, world):
    # A training model whose stem is deliberately in eval (e.g. frozen): every wrapper puts it back as it was,
    # where model.train(was_training) would have put the stem in train mode too.
    from vlalign.evaluation.robust import robust_evaluate

    model = tiny_mini_clip.train()
    model.visual.stem.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    EmbeddingObjective.from_images(model, _images(2, 32, 0))
    assert {name: m.training for name, m in model.named_modules()} == modes
    robust_evaluate(model, world.sample("clean", 4, 0), "fgsm", [2 / 255], batch_size=4, steps_check=False)
    assert {name: m.training for name, m in model.named_modules()} == modes


def _norm_objective(x0: torch.Tensor) -> LossObjective:
    """‖x − x0‖₂ written as sqrt(Σ δ²): its gradient at δ = 0 is NaN in every entry."""
    return LossObjective(torch.nn.Linear(1, 1), lambda p, idx: (p - x0[idx]).pow(2).flatten(1).sum(1).sqrt(), 2)


def test_a_nan_gradient_never_becomes_a_nan_image():
    x = _images(2, 8, 0)
    for attack in (PGD(0.5, norm="l2", steps=3, random_start=False, keep="last"),
                   APGD(0.5, norm="l2", steps=3, loss=None, random_start=False),
                   PGD(4 / 255, steps=3, random_start=False, keep="last")):
        adversarial = attack(_norm_objective(x.clone()), x).adversarial
        assert bool(torch.isfinite(adversarial).all()), attack


def test_l2_direction_treats_nan_as_zero_and_follows_infinite_entries():
    from vlalign.attacks.threat_model import ascent_direction

    grad = torch.tensor([[3.0, float("nan"), 4.0, 0.0], [1.0, float("inf"), float("-inf"), 2.0]])
    direction = ascent_direction(grad, "l2")
    assert torch.allclose(direction[0], torch.tensor([0.6, 0.0, 0.8, 0.0]))
    assert torch.allclose(direction[1], torch.tensor([0.0, 1.0, -1.0, 0.0]) / math.sqrt(2))


def test_the_output_contract_refuses_non_finite_pixels():
    x = _images(1, 8, 0)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="non-finite"):
        PGD(0.1)._check_contract(x, bad)


def test_errors_name_the_problem(tiny_mini_clip):
    with pytest.raises(ValueError, match="unknown attack 'pgdd'.*apgd-ce"):
        build_attack("pgdd", 4 / 255)
    with pytest.raises(ValueError, match="did you mean 4/255"):
        PGD(4.0)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        parse_eps("0")
    with pytest.raises(TypeError, match="takes no option 'stepz'"):
        build_attack("pgd", 4 / 255, stepz=3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PGD(4 / 255)(_objective(tiny_mini_clip, 1), torch.full((1, 3, 32, 32), 2.0))
    with pytest.raises(ValueError, match="duplicates"):
        split_attack_names("pgd,pgd")
    assert parse_eps("4/255") == pytest.approx(4 / 255)
    assert format_eps(parse_eps("4/255")) == "4/255"
    assert format_eps(0.03) == "0.03"


def test_same_seed_same_result_other_seed_other_start(tiny_mini_clip):
    x = _images(3, 32, 1)
    objective = _objective(tiny_mini_clip, 3)
    for name in ("pgd", "apgd-ce", "square", "embedding"):
        attack = build_attack(name, 8 / 255, steps=3, queries=5)
        a, b, c = (attack(objective, x, seed=s).adversarial for s in (7, 7, 8))
        assert torch.equal(a, b), name
        assert not torch.equal(a, c), name


# -------------------------------------------------------------------------------------------- PGD and FGSM

def test_pgd_with_a_fixed_start_equals_a_hand_written_pgd(tiny_mini_clip):
    model = tiny_mini_clip
    x = _images(4, 32, 2)
    objective = _objective(model, 4)
    y, text = objective.labels, objective.candidates
    eps, alpha, steps = 8 / 255, 2 / 255, 10
    start = (x + 0.5 * eps * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).sign()).clamp(0, 1)

    # Madry et al.'s PGD, written out.
    x_adv = start.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        logits = model.logit_scale * model.encode_image(x_adv) @ text.t()
        grad, = torch.autograd.grad(F.cross_entropy(logits, y, reduction="none").sum(), x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.clamp(x + torch.clamp(x_adv - x, min=-eps, max=eps), 0, 1)

    attack = PGD(eps, steps=steps, step_size=alpha, keep="last")
    with attack_mode(model):
        ours = attack.iterate(objective, x, torch.arange(4), start).adversarial
    assert torch.equal(ours, x_adv)
    # random_start=False is the fixed start x itself.
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        logits = model.logit_scale * model.encode_image(x_adv) @ text.t()
        grad, = torch.autograd.grad(F.cross_entropy(logits, y, reduction="none").sum(), x_adv)
        x_adv = torch.clamp(x + torch.clamp(x_adv.detach() + alpha * grad.sign() - x, min=-eps, max=eps), 0, 1)
    plain = PGD(eps, steps=steps, step_size=alpha, random_start=False, keep="last")(objective, x)
    assert torch.equal(plain.adversarial, x_adv)


def test_fgsm_is_one_signed_gradient_step(tiny_mini_clip):
    x = _images(3, 32, 4)
    objective = _objective(tiny_mini_clip, 3)
    eps = 3 / 255
    x_req = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(objective(x_req).loss.sum(), x_req)
    expected = torch.clamp(x + eps * grad.sign(), 0, 1)
    assert torch.allclose(build_attack("fgsm", eps)(objective, x).adversarial, expected, atol=1e-7)


class _CountingObjective(LossObjective):
    def __init__(self, model, n):
        super().__init__(model, self._loss, n)
        self.batches: list[int] = []

    def _loss(self, pixels, index):
        self.batches.append(pixels.shape[0])
        return self._model.encode_image(pixels).sum(1)


@pytest.mark.parametrize("attack, calls", [
    (PGD(4 / 255, steps=5, restarts=3, keep="last"), 6),  # 5 steps + 1 forward to pick the best restart
    (PGD(4 / 255, steps=5, restarts=1, keep="last"), 5),
    (PGD(4 / 255, steps=5, restarts=3, keep="best"), 6),
    (APGD(4 / 255, steps=5, restarts=2, loss=None), 6),  # x^0 .. x^5, the last forward-only
])
def test_one_batched_forward_per_step_over_images_and_restarts(tiny_mini_clip, attack, calls):
    objective = _CountingObjective(tiny_mini_clip, 4)
    attack(objective, _images(4, 32, 0))
    assert len(objective.batches) == calls
    assert set(objective.batches) == {4 * attack.restarts}


def test_restart_selection_prefers_fooled_then_higher_loss():
    x = torch.arange(6.0).view(6, 1, 1, 1)  # rows: restart 0 samples 0..2, restart 1 samples 0..2
    loss = torch.tensor([1.0, 5.0, 2.0, 3.0, 4.0, float("nan")])
    fooled = torch.tensor([False, False, True, False, True, False])
    chosen, chosen_loss, chosen_fooled = select_over_restarts(x, loss, fooled, 2)
    assert chosen.flatten().tolist() == [3.0, 4.0, 2.0]  # higher loss; the fooled one; not the NaN one
    assert chosen_fooled.tolist() == [False, True, True]


@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "apgd-dlr"])
def test_targeted_attacks_reach_their_target_more_often_than_chance(mini_model, world, name):
    # APGD-CE / -DLR on a targeted objective use the targeted forms of their losses (before, they maximized the
    # untargeted loss while counting success as reaching the target: 12% and 31% against PGD's 97% at 20 steps).
    images = world.sample("clean", 24, 77)
    objective = ZeroShotObjective(mini_model, images.classnames, images.labels)
    targets = (images.labels + 1) % len(images.classnames)
    result = build_attack(name, 8 / 255, steps=10)(objective.targeted(targets), images.pixels(), seed=0)
    with torch.no_grad():
        predictions = objective.scores(result.adversarial, torch.arange(24)).argmax(1)
    hit = float((predictions == targets).float().mean())
    assert hit >= 0.5
    assert torch.equal(result.fooled, predictions == targets)


def test_apgd_keeps_a_targeted_objective_targeted(tiny_mini_clip):
    objective = _objective(tiny_mini_clip, 4)
    targeted = objective.targeted((objective.labels + 1) % len(SHAPE_NAMES))
    assert APGD(0.1, loss="ce")._objective(targeted).loss == "ce-targeted"
    assert APGD(0.1, loss="dlr")._objective(targeted).loss == "dlr-targeted"
    assert APGD(0.1, loss="ce")._objective(objective).loss == "ce"
    with pytest.raises(ValueError, match="no targeted form"):
        APGD(0.1, loss="margin")._objective(targeted)


# -------------------------------------------------------------------------------------- success grows with ε

GRADIENT_EPS = (0.5 / 255, 2 / 255, 8 / 255)


@pytest.mark.parametrize("name, options, levels, n", [
    ("pgd", {"steps": 5}, GRADIENT_EPS, 32), ("fgsm", {}, GRADIENT_EPS, 32), ("apgd-ce", {"steps": 5}, GRADIENT_EPS, 32),
    ("square", {"queries": 20}, (1 / 255, 4 / 255, 16 / 255), 16),  # black-box: fewer, larger steps
])
def test_success_grows_with_eps(mini_model, world, name, options, levels, n):
    images = world.sample("clean", n, 123)
    objective = ZeroShotObjective(mini_model, images.classnames, images.labels)
    x = images.pixels()
    rates = []
    for eps in levels:
        adversarial = build_attack(name, eps, **options)(objective, x, seed=0).adversarial
        with torch.no_grad():
            rates.append(float(objective(adversarial).fooled.float().mean()))
    assert rates[0] <= rates[1] + 1 / n and rates[1] <= rates[2] + 1 / n, rates
    assert rates[2] > rates[0] + 0.2, rates


def test_pretrained_mini_clip_falls_under_pgd_at_4_255(mini_model, world):
    images = world.sample("clean", 32, 2718)
    objective = ZeroShotObjective(mini_model, images.classnames, images.labels)
    result = PGD(4 / 255, steps=20)(objective, images.pixels(), seed=0)
    assert float((~result.fooled).float().mean()) <= 0.15


# ------------------------------------------------------------------------------------------------ APGD

def test_apgd_checkpoints_are_the_papers():
    # p_j = 0, .22, .41, .57, .70, .80, .87, .93, .99 (Croce & Hein 2020, Sec. 3.2), w_j = ceil(p_j * N).
    assert apgd_checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    p = [0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99]
    for n in (1, 7, 10, 37, 250, 1000):
        expected = sorted({math.ceil(round(q * n, 9)) for q in p})
        assert apgd_checkpoints(n) == expected, n


class _ScriptedObjective(LossObjective):
    """Loss of the k-th evaluation is ``script[k]`` for every row; zero gradient, so iterates stay put."""

    def __init__(self, model, n, script):
        super().__init__(model, self._loss, n)
        self.script = script
        self.calls = 0

    def _loss(self, pixels, index):
        value = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return torch.full((pixels.shape[0],), float(value)) + 0 * pixels.sum((1, 2, 3))


def _step_sizes(model, script, steps=100, eps=4 / 255):
    attack = APGD(eps, steps=steps, loss=None, random_start=False)
    result = attack(_ScriptedObjective(model, 2, script), _images(2, 32, 0))
    return torch.stack(result.history["step_size"])[:, 0] / (2 * eps)


def test_apgd_halves_the_step_at_every_checkpoint_when_the_loss_never_rises(tiny_mini_clip):
    # Condition 1 holds at every checkpoint: the step used after checkpoint w_j is 2ε / 2^j.
    sizes = _step_sizes(tiny_mini_clip, [1.0])
    checkpoints = [22, 41, 57, 70, 80, 87, 93, 99]
    expected = torch.tensor([0.5 ** sum(k > w for w in checkpoints) for k in range(100)])
    assert torch.equal(sizes, expected)


def test_apgd_keeps_the_step_while_the_loss_keeps_rising(tiny_mini_clip):
    sizes = _step_sizes(tiny_mini_clip, list(range(200)))
    assert torch.equal(sizes, torch.ones(100))


def test_apgd_condition_two_halves_after_an_unreduced_interval_without_progress(tiny_mini_clip):
    # Rising to 100 until w_1 = 22 (no halving), then rising slowly from 50, never back to 100: the loss rises in
    # all steps but the one after each restart from the best point, so condition 1 never holds; condition 2 (no
    # reduction at the last checkpoint, no new best since) holds at every other checkpoint.
    script = list(range(78, 101)) + [50 + 0.01 * i for i in range(200)]
    sizes = _step_sizes(tiny_mini_clip, script)
    halvings = [41, 70, 87, 99]
    expected = torch.tensor([0.5 ** sum(k > w for w in halvings) for k in range(100)])
    assert torch.equal(sizes, expected)


def test_apgd_t_and_dlr_attack_the_mini_clip(mini_model, world):
    images = world.sample("clean", 16, 99)
    objective = ZeroShotObjective(mini_model, images.classnames, images.labels)
    for name in ("apgd-dlr", "apgd-t"):
        result = build_attack(name, 8 / 255, steps=10, n_target_classes=3) if name == "apgd-t" else \
            build_attack(name, 8 / 255, steps=10)
        out = result(objective, images.pixels(), seed=0)
        with torch.no_grad():
            assert torch.equal(objective(out.adversarial).fooled, out.fooled)
        assert float(out.fooled.float().mean()) >= 0.7, name


# ------------------------------------------------------------------------------------ losses and objectives

def test_dlr_losses_match_a_hand_worked_example():
    logits = torch.tensor([[4.0, 3.0, 1.0, 0.0]])
    y, t = torch.tensor([0]), torch.tensor([2])
    # eq. (5): -(z_y - max_{i≠y} z_i) / (z_π1 - z_π3) = -(4 - 3) / (4 - 1)
    assert dlr_loss(logits, y).item() == pytest.approx(-1 / 3)
    # eq. (6): -(z_y - z_t) / (z_π1 - (z_π3 + z_π4)/2) = -(4 - 1) / (4 - 0.5)
    assert targeted_dlr_loss(logits, y, t).item() == pytest.approx(-3 / 3.5)
    assert margin_loss(logits, torch.tensor([1])).item() == pytest.approx(1.0)
    # Shift and scale invariance: what makes DLR immune to a large logit scale.
    assert dlr_loss(100 * logits + 7, y).item() == pytest.approx(-1 / 3, rel=1e-5)
    with pytest.raises(ValueError, match="needs targets"):
        logit_loss("dlr-targeted", logits, y)


def test_subset_objective_maps_rows_to_the_parent_samples(tiny_mini_clip):
    objective = _objective(tiny_mini_clip, 5)
    x = _images(5, 32, 3)
    rows = torch.tensor([4, 1])
    with torch.no_grad():
        full = objective(x)
        part = objective.subset(rows)(x[rows])
    assert torch.allclose(part.loss, full.loss[rows], atol=1e-5)
    assert torch.equal(part.fooled, full.fooled[rows])


def test_retrieval_objective_attacks_image_to_text_similarity(mini_model, world):
    images = world.sample("clean", 8, 31)
    captions = [f"a photo of a {images.classnames[int(y)]}" for y in images.labels]
    objective = RetrievalObjective(mini_model, captions, torch.arange(8), loss="similarity")
    x = images.pixels()
    with torch.no_grad():
        before = objective(x).loss
    after = PGD(4 / 255, steps=5)(objective, x, seed=0).loss
    assert (after > before).all()


def test_caption_likelihood_objective_drives_a_toy_generative_model(tiny_mini_clip):
    # A stand-in "generative VLM": log p(caption | x) = <I(x), T(caption)>; the attack must make the target likely.
    model = tiny_mini_clip

    def log_likelihood(pixels, captions):
        text = model.encode_text(captions)
        return (model.encode_image(pixels) * text).sum(1)

    x = _images(3, 32, 5)
    objective = CaptionLikelihoodObjective(model, log_likelihood, ["a star", "a moon", "a heart"], targeted=True)
    with torch.no_grad():
        before = objective(x).loss
    result = PGD(16 / 255, steps=5)(objective, x, seed=0)
    assert (result.loss > before).all()
    assert result.fooled is None


def test_embedding_attack_increases_the_embedding_distance_monotonically_on_average(mini_model, world):
    images = world.sample("clean", 16, 8)
    x = images.pixels()
    objective = EmbeddingObjective.from_images(mini_model, x)
    result = build_attack("embedding", 4 / 255, steps=10)(objective, x, seed=0)
    trace = result.history["loss"]  # mean ‖φ(x_t) − φ(x)‖² of the iterates x_0 (random start) .. x_9
    assert all(b >= a for a, b in zip(trace, trace[1:])), trace
    assert trace[-1] > 5 * trace[0]
    # On a classification objective it crafts label-free and scores on the labels.
    zero_shot = ZeroShotObjective(mini_model, images.classnames, images.labels)
    scored = build_attack("embedding", 4 / 255, steps=10)(zero_shot, x, seed=0)
    assert torch.equal(scored.adversarial, result.adversarial)
    assert scored.fooled is not None


def test_transfer_from_the_model_itself_equals_white_box_pgd(tiny_mini_clip):
    x = _images(3, 32, 6)
    objective = ZeroShotObjective(tiny_mini_clip, SHAPE_NAMES, torch.tensor([0, 5, 9]))
    white = PGD(8 / 255, steps=4)(objective, x, seed=2).adversarial
    transfer = build_attack("transfer", 8 / 255, steps=4, surrogate=tiny_mini_clip)(objective, x, seed=2)
    assert torch.equal(transfer.adversarial, white)


def test_square_schedule_and_budget(tiny_mini_clip):
    assert square_fraction(0, 10000, 0.8) == 0.8
    assert square_fraction(11, 10000, 0.8) == 0.4
    assert square_fraction(9999, 10000, 0.8) == pytest.approx(0.8 / 512)
    assert square_fraction(5, 100, 0.8) == square_fraction(500, 10000, 0.8)
    objective = _CountingObjective(tiny_mini_clip, 3)
    Square(4 / 255, queries=7)(objective, _images(3, 32, 0))
    assert len(objective.batches) == 7  # black-box: one forward per query, no gradients


@pytest.mark.parametrize("make, bad, message", [
    (lambda **kw: PGD(4 / 255, **kw), {"norm": "l1"}, "unknown norm 'l1'"),
    (lambda **kw: PGD(4 / 255, **kw), {"steps": 0}, "steps must be >= 1, got 0"),
    (lambda **kw: PGD(4 / 255, **kw), {"restarts": 0}, "restarts must be >= 1, got 0"),
    (lambda **kw: APGD(4 / 255, **kw), {"norm": "linfinity"}, "unknown norm 'linfinity'"),
    (lambda **kw: APGD(4 / 255, **kw), {"steps": -1}, "steps must be >= 1, got -1"),
    (lambda **kw: Square(4 / 255, **kw), {"queries": 0}, "queries must be >= 1, got 0"),
    (lambda **kw: Square(4 / 255, **kw), {"restarts": 0}, "restarts must be >= 1, got 0"),
])
def test_constructor_arguments_are_checked_with_their_names(make, bad, message):
    with pytest.raises(ValueError, match=message):
        make(**bad)


def test_norm_is_checked_before_eps_and_sets_the_threat_model():
    # ε = 0.5 is a valid ℓ2 radius; an unknown norm is reported as such, not as a bad ε.
    assert PGD(0.5, norm="l2").norm == "l2"
    with pytest.raises(ValueError, match="unknown norm"):
        PGD(300, norm="l3")
