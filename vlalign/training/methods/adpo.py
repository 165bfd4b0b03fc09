"""AdPO: adversarial robustness of a generative VLM's vision encoder by preference optimization (Liu et al.,
"AdPO: Enhancing the Adversarial Robustness of Large Vision-Language Models with Preference Optimization", 2025).

For every clean training image x (with a prompt; no labels are used):

- x_adv = PGD-10 (ℓ∞, radius ε, random start, step ε/4, last iterate) maximizing ‖φ_ref(x + δ) − φ_ref(x)‖₂² on the
  FROZEN reference vision encoder φ_ref, where φ is the feature map the decoder reads
  (:meth:`GenerativeVLM.encode_image`: the per-patch features, flattened) — the embedding-space attack of FARE,
  aimed at what the language model sees (choices 1 and 8 below change which model and which objective);
- y_w = the reference model's greedy response to (x, prompt) (the preferred, "normal" interpretation);
- y_l = the reference model's greedy response to (x_adv, prompt) (the rejected, misled one);

and the loss is L_AdPO = L_P + λ · L_A with

- L_P a preference loss over sequence log-probabilities: y_w conditioned on the clean image, y_l on the adversarial
  one, h = [log π_θ(y_w|x) − log π_ref(y_w|x)] − [log π_θ(y_l|x_adv) − log π_ref(y_l|x_adv)];
  DPO −log σ(β h), IPO (h − 1/(2β))², KTO (y_w desirable, y_l undesirable), or SimPO (reference-free, on the
  length-normalized log-probabilities), all from :mod:`vlalign.losses.preference` unchanged;
- L_A = the language-modelling loss of y_w given x_adv (token mean): the adversarial image must still produce the
  clean interpretation ("adversarial image optimization", which counters DPO's unconditional preference).

Only the vision encoder's parameters that the decoder's input depends on are trained; projector and decoder stay
frozen, so π_ref differs from π_θ only in the vision encoder.

Choices the paper leaves open (documented here, each a config field where it matters):

1. *Which model the attack runs on, and when* (``attack_on``). ``reference`` (default): the frozen reference
   model, as the summary's "against a frozen reference CLIP model" says, once per image, before training
   (the summary's online generation of y_w and y_l by the current model is ``policy``'s). Then x_adv, y_w, y_l
   and both reference log-probabilities are fixed per pair: they are computed once in ``prepare``, in fixed
   batches, and a training step never runs the reference, the attack or a generation. Each image's random start
   depends on (seed, image index) alone.
   ``policy`` (online pairs, "adversarial training" proper): every step attacks the *current* encoder, PGD-10
   maximizing ‖φ_θ(x + δ) − φ_ref(x)‖₂² (FARE's inner problem, on the features the decoder reads), y_l = the
   current model's greedy response to x_adv, and φ_ref(x) and log π_ref(y_l|x_adv) come from the frozen reference
   vision encoder's parameters (kept once, swapped in by ``torch.func.functional_call``; the decoder is shared, so
   no second language model is held, and no per-image features are stored, which for LLaVA's 576 tokens × 1,024
   would be 2.4 MB an image). y_w and log π_ref(y_w|x) are still computed once.
   A fixed set of perturbations of the reference is soon learned away, while the evaluation attacks the trained
   encoder; ``policy`` trains against that. Random starts depend on (seed, step, image index).
2. *Who generates y_w and y_l.* y_w: the reference (initial) model, greedily (``max_new_tokens`` tokens at most),
   on the clean image. y_l: the reference on its x_adv (``attack_on: reference``) or the current model on its
   x_adv (``policy``): what the model being attacked says.
3. *Pairs whose y_l equals y_w* (the attack did not change the answer) carry no preference; with y_w conditioned
   on x and y_l on x_adv they would push log π_θ(y_w|x_adv) *down*. They are left out of L_P (its mean is over the
   remaining pairs, 0 when none) and still count in L_A.
4. *KTO's reference point z_ref.* The KTO paper estimates KL(π_θ‖π_ref) from mismatched (x, y') pairs, which
   costs another decoder pass; here z_ref = β · max(0, batch mean of log π_θ(y_w|x) − log π_ref(y_w|x)),
   detached, averaged over processes.
5. *SimPO* uses the length-normalized log-probabilities (:attr:`ResponseScores.mean`), as its paper does.
6. *λ schedule* (open question 2): ``constant`` λ = ``la_weight``, or ``linear`` / ``cosine`` from
   ``la_weight_start`` to ``la_weight`` over ``schedule_steps`` steps (a high λ first keeps the clean
   behaviour while the encoder moves; the lower end favours robustness).
7. *Prompts.* Any prompt the data gives (questions and "describe the image"); the answers are never read.
   *Scale of L_A.* L_A is the mean negative log-likelihood per response token of y_w | x_adv, while L_P's
   log-ratios use summed sequence log-probabilities (DPO's). The summary does not say which L_A is; the
   per-token mean keeps λ's weight from growing with response length.
8. *What the attack maximizes* (``attack_objective``). ``embedding`` (default; the paper's, above) or ``response``:
   −log p(y_w | x + δ, prompt) under the attacked model, the threat an answer-level evaluation uses. Measured in the
   mini world (README, AdPO): with the embedding attack AdPO stays 14-17 points under FARE at 4/255 whatever λ, loss
   or ``attack_on``; ``policy`` + ``response`` reaches FARE's robustness with 17 points more clean accuracy.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate
from tqdm.auto import tqdm

from vlalign.attacks.base import eval_mode
from vlalign.attacks.objectives import EmbeddingObjective, ResponseObjective
from vlalign.attacks.pgd import PGD
from vlalign.attacks.threat_model import LinfTrainingAttack, parse_eps
from vlalign.config import NumberText, check_range, option
from vlalign.losses import preference as po
from vlalign.losses.language import language_modeling_loss
from vlalign.models.vlm import GenerativeVLM
from vlalign.training import distributed
from vlalign.training.frozen import FROZEN_BATCH
from vlalign.training.method import Method, Stream
from vlalign.training.methods.vlm_pretrain import IndexDataset
from vlalign.training.sampling import item_seeds

LOSSES = ("dpo", "ipo", "kto", "simpo")
SCHEDULES = ("constant", "linear", "cosine")
ATTACK_ON = ("reference", "policy")
ATTACK_OBJECTIVES = ("embedding", "response")


@dataclass
class AdPOConfig(LinfTrainingAttack):
    """The AdPO objective, its training attack and the λ of the adversarial LM term."""

    loss: Literal["dpo", "ipo", "kto", "simpo"] = option("dpo", "preference loss over sequence log-probs: dpo, ipo, "
                                                                "kto, or simpo (reference-free)")
    beta: float = option(0.1, "β of DPO / IPO / KTO")
    simpo_beta: float = option(2.0, "β of SimPO (on length-normalized log-probs)")
    simpo_gamma: float = option(0.5, "SimPO's target reward margin γ")
    la_weight: float = option(1.0, "λ of L_A, the LM loss of y_w given x_adv (0: no L_A); the end value of a schedule")
    la_schedule: Literal["constant", "linear", "cosine"] = option(
        "constant", "λ over training: constant, or linear / cosine from la_weight_start to la_weight")
    la_weight_start: float = option(2.0, "λ at step 0 of a linear or cosine schedule")
    schedule_steps: int = option(0, "steps over which a schedule moves (the run's steps; required for a schedule)")
    eps: NumberText = option("4/255", "ℓ∞ radius of the training attack on [0, 1] pixels (the paper: 2/255 or 4/255)")
    attack_steps: int = option(10, "PGD iterations (PGD-10)")
    attack_step_size: NumberText | None = option(None, "PGD step size (null: ε/4)")
    max_new_tokens: int = option(24, "longest greedy response y_w / y_l")
    attack_seed: int = option(0, "seed of the training attack's random starts (one per image)")
    attack_on: Literal["reference", "policy"] = option(
        "reference", "reference: x_adv, y_l and π_ref(y_l|x_adv) computed once on the frozen reference before "
                     "training (the summary's frozen-reference attack); policy: every step re-attacks the current "
                     "encoder and y_l is the current model's answer on that x_adv (online pairs; a step costs an "
                     "attack, a generation and a reference scoring)")
    attack_objective: Literal["embedding", "response"] = option(
        "embedding", "what the training attack maximizes: embedding, ‖φ(x+δ) − φ_ref(x)‖² on the features the decoder "
                     "reads (the paper's attack on the vision encoder); response, −log p(y_w | x+δ, prompt) of the "
                     "attacked model (the threat an answer-level evaluation uses)")

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {list(LOSSES)}, got {self.loss!r}")
        if self.attack_on not in ATTACK_ON:
            raise ValueError(f"attack_on must be one of {list(ATTACK_ON)}, got {self.attack_on!r}")
        if self.attack_objective not in ATTACK_OBJECTIVES:
            raise ValueError(f"attack_objective must be one of {list(ATTACK_OBJECTIVES)}, got {self.attack_objective!r}")
        if self.la_schedule not in SCHEDULES:
            raise ValueError(f"la_schedule must be one of {list(SCHEDULES)}, got {self.la_schedule!r}")
        for name in ("beta", "simpo_beta"):
            check_range(name, getattr(self, name), 0, low_open=True)
        for name in ("simpo_gamma", "la_weight", "la_weight_start"):
            check_range(name, getattr(self, name), 0)
        check_range("attack_steps", self.attack_steps, 1)
        check_range("max_new_tokens", self.max_new_tokens, 1)
        check_range("schedule_steps", self.schedule_steps, 0)
        if self.la_schedule != "constant" and self.schedule_steps < 1:
            raise ValueError(f"la_schedule {self.la_schedule!r} needs schedule_steps >= 1 (the run's steps)")
        parse_eps(self.eps)
        if self.attack_step_size is not None:
            parse_eps(self.attack_step_size)

    def la_at(self, step: int) -> float:
        """λ at optimizer step ``step``."""
        if self.la_schedule == "constant":
            return self.la_weight
        t = min(1.0, step / max(1, self.schedule_steps - 1))
        if self.la_schedule == "cosine":
            t = 0.5 * (1 - math.cos(math.pi * t))
        return self.la_weight_start + t * (self.la_weight - self.la_weight_start)


def sequence_preference_loss(name: str, chosen: torch.Tensor, rejected: torch.Tensor, reference_chosen: torch.Tensor,
                             reference_rejected: torch.Tensor, chosen_mean: torch.Tensor, rejected_mean: torch.Tensor,
                             config: AdPOConfig, batch_mean=distributed.global_mean) -> torch.Tensor:
    """Per-pair L_P ``[B]`` from summed sequence log-probs (``chosen`` = log π_θ(y_w|x), ``rejected`` =
    log π_θ(y_l|x_adv), ``reference_*`` the frozen model's) and, for SimPO, their per-token means."""
    if name == "dpo":
        return po.dpo_loss(chosen, rejected, reference_chosen, reference_rejected, config.beta)
    if name == "ipo":
        return po.ipo_loss(chosen, rejected, reference_chosen, reference_rejected, config.beta)
    if name == "simpo":
        return po.simpo_loss(chosen_mean, rejected_mean, config.simpo_beta, config.simpo_gamma)
    if name == "kto":
        z_ref = (config.beta * batch_mean(chosen - reference_chosen)).clamp(min=0).detach()
        desirable = torch.cat([torch.ones_like(chosen, dtype=torch.bool), torch.zeros_like(rejected, dtype=torch.bool)])
        losses = po.kto_loss(torch.cat([chosen, rejected]), torch.cat([reference_chosen, reference_rejected]),
                             desirable, config.beta, z_ref)
        return 0.5 * (losses[: chosen.shape[0]] + losses[chosen.shape[0]:])  # one value per pair
    raise ValueError(f"unknown AdPO loss {name!r}; expected one of {list(LOSSES)}")


class PromptedImages(Dataset):
    """Items ``{"index", "pixels", "prompt"}`` drawn from several datasets in turn (their answers are dropped):
    the label-free training set of AdPO."""

    def __init__(self, *datasets: Dataset) -> None:
        self.parts = [d for d in datasets if len(d)]
        if not self.parts:
            raise ValueError("PromptedImages needs at least one non-empty dataset")
        self.offsets = [0]
        for part in self.parts:
            self.offsets.append(self.offsets[-1] + len(part))

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        part = max(k for k, start in enumerate(self.offsets[:-1]) if start <= index)
        item = self.parts[part][index - self.offsets[part]]
        if "pixels" not in item or "prompt" not in item:
            raise ValueError(f"AdPO items need \"pixels\" and \"prompt\", got keys {sorted(item)}")
        return {"index": index, "pixels": item["pixels"], "prompt": item["prompt"]}


class AdPO(Method):
    """AdPO on ``model``'s vision encoder (``model`` itself is trained; pass a copy to keep the original).

    ``data`` items hold ``"pixels"`` (uint8 ``[3, H, W]``) and ``"prompt"`` (e.g. :class:`PromptedImages`). See
    the module docstring for the objective and the choices it makes.
    """

    #: TeCoA's and FARE's loop defaults (:class:`RobustFinetune`), so that the rows of the experiment compare at
    #: equal settings; for a large pretrained tower (CLIP ViT-L) use a far smaller lr, ~1e-5.
    default_train: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 3e-4, "betas": (0.9, 0.98),
                                               "weight_decay": 1e-4}
    #: Show a progress bar while precomputing the pairs.
    progress: bool = True

    def __init__(self, model: GenerativeVLM, data: Dataset, config: AdPOConfig,
                 precompute_batch_size: int = FROZEN_BATCH) -> None:
        super().__init__()
        if len(data) == 0:
            raise ValueError("AdPO needs at least one training image")
        self.config, self.data, self.precompute_batch_size = config, data, precompute_batch_size
        self.model = model.eval()
        self._set_trainable()
        self.attack = PGD(config.epsilon, norm="linf", steps=config.attack_steps, step_size=config.step_size,
                          random_start=True, keep="last")
        #: The pairs and the reference's log-probs, per item (filled once by ``prepare``).
        self.frozen: dict[str, Any] = {}
        #: How many times the pairs were computed (a resumed or continued run never recomputes them).
        self.precompute_calls = 0
        #: Where the vision encoder sits in the model (its parameters' name prefix).
        self.vision_prefix = next(n for n, m in model.named_modules() if m is model.vision_encoder)

    def _set_trainable(self) -> None:
        """Gradients for the vision parameters the decoder's input depends on; none anywhere else."""
        for param in self.model.parameters():
            param.requires_grad_(False)
        for param in self.model.vision_parameters():
            param.requires_grad_(True)

    def streams(self) -> dict[str, Stream]:
        return {"train": Stream(IndexDataset(len(self.data)))}

    @torch.no_grad()
    def _pairs(self, batch: dict[str, Any], device: torch.device, seed: int) -> dict[str, Any]:
        model = self.model
        x = batch["pixels"].to(device).float().div_(255.0)
        prompts = list(batch["prompt"])
        chosen = model.generate(x, prompts, self.config.max_new_tokens)
        out = {"chosen": chosen, "prompts": prompts, "pixels": batch["pixels"].cpu(),
               "reference_chosen": model.response_logprobs(x, prompts, chosen).total.float().cpu()}
        if self.config.attack_on == "policy":
            return out
        if self.config.attack_objective == "response":
            objective = ResponseObjective(model, prompts, chosen)
        else:
            objective = EmbeddingObjective.from_images(model, x)  # φ_ref(x): the model has not been updated
        with torch.enable_grad():
            x_adv = self.attack(objective, x, sample_seeds=item_seeds(seed, 0, batch["index"], salt=17)).adversarial
        rejected = model.generate(x_adv, prompts, self.config.max_new_tokens)
        out["reference_rejected"] = model.response_logprobs(x_adv, prompts, rejected).total.float().cpu()
        return {**out, "x_adv": x_adv.cpu(), "rejected": rejected}

    def precompute_pairs(self, device: torch.device) -> None:
        """What every step reuses, once, in consecutive fixed batches, by the model before any update: y_w and
        log π_ref(y_w|x) of every item, and either x_adv, y_l and log π_ref(y_l|x_adv) (``attack_on: reference``)
        or the reference vision parameters (``policy``); see the module docstring."""
        self.precompute_calls += 1
        loader = torch.utils.data.DataLoader(self.data, batch_size=self.precompute_batch_size, shuffle=False,
                                             collate_fn=default_collate)
        parts: list[dict[str, Any]] = []
        what = "y_w, reference" if self.config.attack_on == "policy" else "attack, y_w, y_l, reference"
        with eval_mode(self.model):
            for batch in tqdm(loader, desc=f"AdPO pairs ({what})", disable=not self.progress):
                parts.append(self._pairs(batch, device, self.config.attack_seed))
        frozen: dict[str, Any] = {"attack_on": self.config.attack_on, "attack_objective": self.config.attack_objective}
        for key in ("x_adv", "reference_chosen", "reference_rejected", "pixels"):
            if key in parts[0]:
                frozen[key] = torch.cat([p[key] for p in parts])
        for key in ("chosen", "rejected", "prompts"):
            if key in parts[0]:
                frozen[key] = [text for p in parts for text in p[key]]
        if self.config.attack_on == "policy":
            frozen["reference_vision"] = {k: v.detach().clone()
                                          for k, v in self.model.vision_encoder.state_dict().items()}
        else:
            frozen["differs"] = torch.tensor([w != lose for w, lose in zip(frozen["chosen"], frozen["rejected"])])
        self.frozen = frozen

    def reference_image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The frozen reference's vision features of ``pixels`` (``attack_on: policy``): the model's own
        ``image_features`` with the reference vision parameters swapped in for this call only."""
        device = self.model.device
        reference = self.frozen["reference_vision"]
        parameters = {f"model.{self.vision_prefix}.{k}": v.to(device) for k, v in reference.items()}
        return torch.func.functional_call(_ImageFeaturesOf(self.model), parameters, (pixels,), strict=False)

    def prepare(self, device: torch.device) -> None:
        """Move to ``device`` and compute the pairs unless they already are (a second ``fit`` on the same method,
        or a call before ``fit`` to time them apart, reuses them)."""
        self.to(device)
        self._set_trainable()  # again: finish() of an earlier fit turned gradients off
        given = (self.frozen.get("attack_on"), self.frozen.get("attack_objective")) if self.frozen else None
        wanted = (self.config.attack_on, self.config.attack_objective)
        if given is not None and given != wanted and (given[0], wanted[0]) != ("policy", "policy"):
            raise ValueError(f"the given pairs were computed for attack_on {given[0]!r} with the {given[1]!r} "
                             f"objective, this run needs attack_on {wanted[0]!r} with the {wanted[1]!r} objective")
        if not self.frozen:
            self.precompute_pairs(device)

    def trainable_module(self) -> nn.Module:
        return self.model.vision_encoder

    def finish(self) -> GenerativeVLM:
        for param in self.model.parameters():
            param.requires_grad_(False)
        return self.model.eval()

    def train(self, mode: bool = True) -> "AdPO":
        """Only the vision encoder follows ``mode``; projector and decoder stay in eval mode (frozen)."""
        super().train(False)
        self.model.vision_encoder.train(mode)
        return self

    def _online_pairs(self, x: torch.Tensor, prompts: list[str], chosen: list[str], index: torch.Tensor,
                      batch: dict[str, Any]) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """``attack_on: policy``: x_adv by PGD on the current model (away from φ_ref(x), or away from y_w), y_l = the
        current model's greedy response to it, log π_ref(y_l|x_adv) with the reference vision parameters."""
        if self.config.attack_objective == "response":
            objective = ResponseObjective(self.model, prompts, chosen)
        else:
            with torch.no_grad():
                target = self.reference_image_features(x).flatten(1).float()  # φ_ref(x), as encode_image flattens
            objective = EmbeddingObjective(self.model, target, normalize=False)
        seeds = item_seeds(batch["seed"], batch["step"], index, salt=17)
        x_adv = self.attack(objective, x, sample_seeds=seeds).adversarial.detach()
        with torch.no_grad():
            rejected = self.model.generate(x_adv, prompts, self.config.max_new_tokens)
            reference = self.model.response_logprobs(None, prompts, rejected,
                                                     image_features=self.reference_image_features(x_adv))
        return x_adv, rejected, reference.total.float()

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if not self.frozen:
            raise RuntimeError("prepare() must run before the first step: the AdPO pairs are not computed")
        index = batch["train"]["index"].cpu()
        rows = index.tolist()
        device = self.model.device
        frozen = self.frozen
        x = frozen["pixels"][index].to(device).float().div_(255.0)
        prompts = [frozen["prompts"][i] for i in rows]
        chosen = [frozen["chosen"][i] for i in rows]
        reference_chosen = frozen["reference_chosen"][index].to(device)
        if self.config.attack_on == "policy":
            x_adv, rejected, reference_rejected = self._online_pairs(x, prompts, chosen, index, batch)
            differs = torch.tensor([w != lose for w, lose in zip(chosen, rejected)], device=device)
        else:
            x_adv = frozen["x_adv"][index].to(device)
            rejected = [frozen["rejected"][i] for i in rows]
            reference_rejected = frozen["reference_rejected"][index].to(device)
            differs = frozen["differs"][index].to(device)
        b = len(rows)
        features = self.model.image_features(torch.cat([x, x_adv]))
        clean, adversarial = features[:b], features[b:]
        # One decoder pass scores y_w | x, y_l | x_adv and (for L_A) y_w | x_adv.
        scores = self.model.response_logprobs(None, prompts * 3, chosen + rejected + chosen,
                                              image_features=torch.cat([clean, adversarial, adversarial]))
        total, mean = scores.total.float(), scores.mean.float()
        pair_losses = sequence_preference_loss(self.config.loss, total[:b], total[b:2 * b], reference_chosen,
                                               reference_rejected, mean[:b], mean[b:2 * b], self.config)
        count = differs.sum()
        preference = torch.where(differs, pair_losses, torch.zeros_like(pair_losses)).sum() / count.clamp(min=1)
        adversarial_lm = language_modeling_loss(scores.per_token[2 * b:], scores.mask[2 * b:])
        la = self.config.la_at(int(batch["step"]))
        loss = preference + la * adversarial_lm if la > 0 else preference + 0.0 * adversarial_lm
        with torch.no_grad():
            margin = torch.where(differs, total[:b] - total[b:2 * b], torch.zeros_like(total[:b])).sum() / count.clamp(min=1)
        return {"loss": loss, "preference": preference.detach(), "adversarial_lm": adversarial_lm.detach(),
                "la_weight": torch.tensor(la, device=device), "pairs_used": count.float() / b,
                "margin": margin}


class _ImageFeaturesOf(nn.Module):
    """``model.image_features`` as a module's ``forward``, so that ``functional_call`` can run it with other
    vision parameters."""

    def __init__(self, model: GenerativeVLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.image_features(pixels)


def frozen_copy(model: GenerativeVLM) -> GenerativeVLM:
    """A deep copy of ``model`` with gradients off (the AdPO method trains the model it is given)."""
    copied = copy.deepcopy(model).eval()
    for param in copied.parameters():
        param.requires_grad_(False)
    return copied
