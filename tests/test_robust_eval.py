"""Robust evaluation: the worst case per sample, the gradient-masking checks, and the ``robust-eval`` command."""

from __future__ import annotations

import json

import pytest
import torch

from vlalign.cli import main
from vlalign.data.image_set import ImageSet
from vlalign.evaluation.robust import (
    black_box_warnings, eps_monotonicity_warnings, gradient_warnings, randomness_warnings, robust_evaluate,
    steps_monotonicity_warning, worst_case_correct,
)
from vlalign.models.base import ContrastiveModel


# --------------------------------------------------------------------------------------------- pure checks

def test_worst_case_is_the_per_sample_and_over_attacks():
    clean = torch.tensor([True, True, True, False])
    per_attack = {"pgd": torch.tensor([True, False, True, False]), "apgd-ce": torch.tensor([True, True, False, True])}
    assert worst_case_correct(clean, per_attack).tolist() == [True, False, False, False]
    # Not the minimum of the accuracies (50%): the attacks fool different samples.
    assert float(worst_case_correct(clean, per_attack).float().mean()) == 0.25
    with pytest.raises(ValueError, match="pgd"):
        worst_case_correct(clean, {"pgd": torch.ones(3, dtype=torch.bool)})


def test_eps_check_warns_only_when_accuracy_rises_with_eps():
    fine = {"pgd": {1 / 255: 0.5, 2 / 255: 0.3, 4 / 255: 0.1}}
    assert eps_monotonicity_warnings(fine, tolerance=0.0) == []
    masked = {"pgd": {1 / 255: 0.5, 2 / 255: 0.3, 4 / 255: 0.45}}
    (warning,) = eps_monotonicity_warnings(masked, tolerance=0.01)
    assert "pgd" in warning and "2/255" in warning and "4/255" in warning
    assert eps_monotonicity_warnings(masked, tolerance=0.2) == []


def test_steps_and_black_box_checks():
    assert steps_monotonicity_warning("pgd", 4 / 255, 5, 0.30, 20, 0.20, 0.0) == []
    (warning,) = steps_monotonicity_warning("pgd", 4 / 255, 5, 0.20, 20, 0.30, 0.0)
    assert "20 steps" in warning
    robust = {"pgd": {4 / 255: 0.40}, "apgd-ce": {4 / 255: 0.35}, "square": {4 / 255: 0.20}}
    (warning,) = black_box_warnings(robust, ["pgd", "apgd-ce"], ["square"], tolerance=0.0)
    assert "square" in warning and "apgd-ce" in warning
    robust["square"][4 / 255] = 0.36
    assert black_box_warnings(robust, ["pgd", "apgd-ce"], ["square"], tolerance=0.0) == []


def test_gradient_and_randomness_checks():
    grads = torch.randn(4, 3, 2, 2)
    assert gradient_warnings(grads) == []
    grads[1] = 0
    grads[2, 0, 0, 0] = float("nan")
    warnings = gradient_warnings(grads)
    assert any("1 of 4 samples have an all-zero" in w for w in warnings)
    assert any("NaN" in w for w in warnings)
    logits = torch.randn(8, 12)
    assert randomness_warnings(logits, logits.clone()) == []
    assert randomness_warnings(logits, logits + 1e-2 * torch.randn(8, 12))


# ------------------------------------------------------------------------ the checks fire on broken models

class _Wrapped(ContrastiveModel):
    """The embedded model behind a defence that breaks gradient-based evaluation."""

    def __init__(self, inner: ContrastiveModel, kind: str) -> None:
        super().__init__()
        self.inner = inner
        self.kind = kind
        self.image_size, self.embed_dim = inner.image_size, inner.embed_dim

    def encode_image(self, pixels, normalize=True):
        if self.kind == "quantize":
            # Rounding has a zero derivative everywhere: the classic masked gradient.
            pixels = torch.round(pixels * 16) / 16
        elif self.kind == "noise":
            pixels = (pixels + 0.02 * torch.randn_like(pixels)).clamp(0, 1)
        return self.inner.encode_image(pixels, normalize)

    def tokenize(self, texts):
        return self.inner.tokenize(texts)

    def encode_tokens(self, tokens, normalize=True):
        return self.inner.encode_tokens(tokens, normalize)

    @property
    def image_encoder(self):
        return self.inner.image_encoder

    @property
    def text_encoder(self):
        return self.inner.text_encoder

    @property
    def logit_scale(self):
        return self.inner.logit_scale


@pytest.fixture(scope="module")
def eval_images(world) -> ImageSet:
    return world.sample("clean", 24, 555)


def test_masked_gradients_are_flagged(mini_model, eval_images):
    result = robust_evaluate(_Wrapped(mini_model, "quantize"), eval_images, ["pgd", "square"], [8 / 255, 16 / 255],
                             steps=3, queries=25, steps_check=False)
    text = " ".join(result.warnings)
    assert "all-zero input gradient" in text
    assert "black-box square beats every white-box attack" in text
    assert result.checks["zero_gradient_samples"] == len(eval_images)


def test_randomness_is_flagged(mini_model, eval_images):
    torch.manual_seed(0)
    result = robust_evaluate(_Wrapped(mini_model, "noise"), eval_images, ["fgsm"], [4 / 255], steps_check=False)
    assert any("identical forward passes" in w for w in result.warnings)


def test_a_sound_evaluation_has_no_warnings_and_the_right_shape(mini_model, eval_images):
    result = robust_evaluate(mini_model, eval_images, "fgsm,pgd", [1 / 255, 4 / 255], steps=4, seed=1)
    metrics = result.metrics()
    assert metrics["warnings"] == [], metrics["warnings"]
    assert set(metrics["robust"]) == {"fgsm", "pgd"}
    assert set(metrics["robust"]["pgd"]) == {"1/255", "4/255"} == set(metrics["worst_case"])
    for eps in ("1/255", "4/255"):
        worst = metrics["worst_case"][eps]
        assert worst <= min(metrics["robust"][a][eps] for a in ("fgsm", "pgd")) <= metrics["clean"]
    assert metrics["worst_case"]["4/255"] < metrics["worst_case"]["1/255"]
    assert "steps" in metrics["checks"]
    from vlalign.reporting.robust import robust_report

    report = robust_report(result.metrics(), command="vlalign robust-eval ...")
    assert "| **worst case**" in report and "vlalign robust-eval" in report


# ----------------------------------------------------------------------------------------------- the CLI

def test_robust_eval_command_writes_metrics_and_report(tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["robust-eval", "--attack", "fgsm,pgd,typographic", "--eps", "2/255,4/255", "--steps", "2", "--n", "12",
                 "--seed", "3", "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"clean", "robust", "worst_case", "warnings"}
    assert 0 <= metrics["clean"] <= 1
    assert set(metrics["robust"]["pgd"]) == {"2/255", "4/255"}
    assert set(metrics["robust"]["typographic"]) == {"unbounded"}
    assert set(metrics["worst_case"]) == {"2/255", "4/255"}
    assert "worst case" in (out / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--attack", "pgd,bogus"], "unknown attack 'bogus'"),
    (["--eps", "4"], "did you mean 4/255"),
    (["--eps", "four"], "fraction like 4/255"),
])
def test_robust_eval_command_rejects_bad_input(tmp_path, capsys, args, message):
    code = main(["robust-eval", "--n", "2", "--out", str(tmp_path / "x"), *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_mixing_l2_and_linf_attacks_is_flagged(tiny_mini_clip, world):
    result = robust_evaluate(tiny_mini_clip, world.sample("clean", 4, 1), ["pgd", "pgd-l2"], [4 / 255], steps=1,
                             steps_check=False)
    assert any("mixes threat models (l2, linf)" in w for w in result.warnings)
