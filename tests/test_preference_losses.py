"""Preference losses against closed forms, hand-worked numbers, float64 finite differences and Lemma 3.1."""

import math

import pytest
import torch
import torch.nn.functional as F

from vlalign.losses import preference as po
from vlalign.losses.objectives import ObjectiveParams, preference_objective

torch.manual_seed(0)


def _logps(n=6, k=5):
    logits = torch.randn(n, k, dtype=torch.float64)
    chosen = torch.randint(0, k, (n,))
    rejected = (chosen + 1 + torch.randint(0, k - 1, (n,))) % k
    return logits, chosen, rejected


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 5.0])
def test_invariants_at_initialization(beta):
    logits, chosen, rejected = _logps()
    lp = po.log_policy(logits)
    w, l = po.gather(lp, chosen), po.gather(lp, rejected)
    # policy == reference: h = 0
    assert torch.allclose(po.dpo_loss(w, l, w, l, beta), torch.full_like(w, math.log(2)))
    assert torch.allclose(po.ipo_loss(w, l, w, l, beta), torch.full_like(w, (1 / (2 * beta)) ** 2))
    assert torch.allclose(po.hinge_loss(w, l, w, l, beta), torch.ones_like(w))
    desirable = torch.tensor([True, False] * 3)
    assert torch.allclose(po.kto_loss(w, w, desirable, beta, 0.0), torch.full_like(w, 0.5))
    z = po.kto_reference_point(logits, logits, beta)
    assert float(z) == 0.0
    for name in ("dpo", "ipo", "kto", "cdpo", "hinge"):
        value = preference_objective(name)(logits, logits, chosen, rejected, ObjectiveParams(beta=beta))
        expected = {"dpo": math.log(2), "cdpo": math.log(2), "ipo": (1 / (2 * beta)) ** 2, "kto": 0.5, "hinge": 1.0}[name]
        assert float(value) == pytest.approx(expected, rel=1e-9)


def test_hand_worked_dpo_ipo_kto():
    # policy log-probs w=-0.5, l=-2.0; reference w=-1.0, l=-1.0 -> h = 1.5
    w, l, rw, rl = (torch.tensor([v], dtype=torch.float64) for v in (-0.5, -2.0, -1.0, -1.0))
    assert float(po.policy_ratio(w, l, rw, rl)) == pytest.approx(1.5)
    assert float(po.dpo_loss(w, l, rw, rl, 2.0)) == pytest.approx(-math.log(1 / (1 + math.exp(-3.0))))
    assert float(po.dpo_loss(w, l, rw, rl, 2.0, label_smoothing=0.2)) == pytest.approx(
        -0.8 * math.log(1 / (1 + math.exp(-3.0))) - 0.2 * math.log(1 / (1 + math.exp(3.0))))
    assert float(po.ipo_loss(w, l, rw, rl, 0.25)) == pytest.approx((1.5 - 2.0) ** 2)
    assert float(po.hinge_loss(w, l, rw, rl, 0.5)) == pytest.approx(0.25)
    assert float(po.simpo_loss(w, l, 2.0, 0.5)) == pytest.approx(-math.log(1 / (1 + math.exp(-(2.0 * 1.5 - 0.5)))))
    # KTO: r = beta * (logp - ref) = 1.0*(-0.5+1.0)=0.5 desirable, z_ref = 0.2 -> 1 - sigmoid(0.3)
    kto = po.kto_loss(torch.tensor([-0.5, -2.0]), torch.tensor([-1.0, -1.0]), torch.tensor([True, False]), 1.0, 0.2, 2.0, 3.0)
    assert float(kto[0]) == pytest.approx(2.0 * (1 - 1 / (1 + math.exp(-0.3))), rel=1e-6)
    # undesirable: r = -1.0, v = sigmoid(z - r) = sigmoid(1.2)
    assert float(kto[1]) == pytest.approx(3.0 * (1 - 1 / (1 + math.exp(-1.2))), rel=1e-6)


def test_kl_against_float64_sum_and_properties():
    p, q = torch.randn(4, 7, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64)
    pp, qq = F.softmax(p, -1), F.softmax(q, -1)
    brute = torch.tensor([sum(pp[i, j] * math.log(pp[i, j] / qq[i, j]) for j in range(7)) for i in range(4)], dtype=torch.float64)
    assert torch.allclose(po.kl_divergence(p, q), brute)
    assert bool((po.kl_divergence(p, q) >= 0).all())
    assert torch.allclose(po.kl_divergence(p, p), torch.zeros(4, dtype=torch.float64))
    assert torch.allclose(po.regularization_kl(p, q, "ref_policy"), po.kl_divergence(q, p))
    assert torch.allclose(po.regularization_kl(p, q), po.kl_divergence(p, q))
    with pytest.raises(ValueError, match="direction"):
        po.regularization_kl(p, q, "sideways")


def test_kto_reference_point_clamped_detached_and_defined_for_one_sided_batches():
    policy = torch.randn(5, 4, requires_grad=True)
    reference = torch.randn(5, 4)
    z = po.kto_reference_point(policy, reference, 1.5)
    assert not z.requires_grad and float(z) >= 0
    assert float(z) == pytest.approx(1.5 * float(po.kl_divergence(policy, reference).mean()), rel=1e-6)
    for desirable in (torch.ones(5, dtype=torch.bool), torch.zeros(5, dtype=torch.bool)):
        loss = po.kto_loss(policy[:, 0], reference[:, 0], desirable, 1.5, z)
        assert torch.isfinite(loss).all()


@pytest.mark.parametrize("name", ["dpo", "cdpo", "ipo", "kto", "hinge", "simpo", "ce"])
def test_gradients_match_float64_finite_differences(name):
    logits, chosen, rejected = _logps(4, 5)
    reference = torch.randn(4, 5, dtype=torch.float64)
    params = ObjectiveParams(beta=0.7)
    objective = preference_objective(name)
    if name == "kto":
        # z_ref is detached by design: differentiate with it held at its value for the unperturbed logits.
        z_fixed = po.kto_reference_point(logits, reference, params.beta)

        def objective(lg, ref, ch, rj, p):
            lp, lr = po.log_policy(lg), po.log_policy(ref)
            logps = torch.cat([po.gather(lp, ch), po.gather(lp, rj)])
            ref_logps = torch.cat([po.gather(lr, ch), po.gather(lr, rj)])
            desirable = torch.cat([torch.ones_like(ch, dtype=torch.bool), torch.zeros_like(rj, dtype=torch.bool)])
            return po.kto_loss(logps, ref_logps, desirable, p.beta, z_fixed).mean()

        assert torch.allclose(objective(logits, reference, chosen, rejected, params),
                              preference_objective("kto")(logits, reference, chosen, rejected, params))
    x = logits.clone().requires_grad_(True)
    objective(x, reference, chosen, rejected, params).backward()
    eps = 1e-6
    numeric = torch.zeros_like(logits)
    for i in range(4):
        for j in range(5):
            plus, minus = logits.clone(), logits.clone()
            plus[i, j] += eps
            minus[i, j] -= eps
            numeric[i, j] = (objective(plus, reference, chosen, rejected, params)
                             - objective(minus, reference, chosen, rejected, params)) / (2 * eps)
    assert torch.allclose(x.grad, numeric, atol=1e-6), (x.grad, numeric)


def test_lemma_3_1_policy_ratio_only_depends_on_image_embedding_change():
    """h = (I_θ(x) − I_ref(x))ᵀ(T(y_w) − T(y_l)) / τ when the text encoder is frozen (eq. 9)."""
    torch.manual_seed(1)
    d, k, n, tau = 16, 6, 8, 0.07
    text = F.normalize(torch.randn(k, d, dtype=torch.float64), dim=-1)
    img_ref = F.normalize(torch.randn(n, d, dtype=torch.float64), dim=-1)
    img_theta = F.normalize(img_ref + 0.3 * torch.randn(n, d, dtype=torch.float64), dim=-1)
    chosen = torch.randint(0, k, (n,))
    rejected = (chosen + 1) % k
    lp_theta, lp_ref = po.log_policy(img_theta @ text.t() / tau), po.log_policy(img_ref @ text.t() / tau)
    h = po.policy_ratio(po.gather(lp_theta, chosen), po.gather(lp_theta, rejected),
                        po.gather(lp_ref, chosen), po.gather(lp_ref, rejected))
    lemma = ((img_theta - img_ref) * (text[chosen] - text[rejected])).sum(-1) / tau
    assert torch.allclose(h, lemma, atol=1e-10)


def test_bad_hyperparameters_are_rejected():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="beta"):
        po.dpo_loss(x, x, x, x, 0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        po.dpo_loss(x, x, x, x, 1.0, label_smoothing=0.7)
    with pytest.raises(ValueError, match="unknown preference objective"):
        preference_objective("orpo-typo")
