"""The AdPO experiment's evaluation of one encoder in a VLM: the table's columns on the fresh evaluation set, and the
target check's clean and attacked scores per question on another set of fresh questions."""

from __future__ import annotations

import torch

from vlalign.attacks.threat_model import parse_eps
from vlalign.data.vqa import MiniCaptions, MiniVQA, wrong_answers
from vlalign.evaluation.captioning import cider_d
from vlalign.evaluation.vlm_robust import robust_evaluate_vlm, targeted_success
from vlalign.evaluation.vqa import exact_match, generate_answers
from vlalign.models.mini_vlm import MiniVLM

#: The ε of the table's APGD columns.
EVAL_EPS = ("2/255", "4/255")
#: The ε of the targeted attack's column.
TARGETED_EPS = "4/255"


class Questions:
    """Fresh mini-world questions, rendered once: pixels, prompts, answers, question types and, for the targeted
    attack, a wrong answer of the same type for each."""

    def __init__(self, n: int, seed: int) -> None:
        questions = MiniVQA(n, seed)
        items = [questions[i] for i in range(len(questions))]
        self.pixels = torch.stack([item["pixels"] for item in items])
        self.prompts = [item["prompt"] for item in items]
        self.answers = [item["answer"] for item in items]
        self.types = [item["question_type"] for item in items]
        self.targets = wrong_answers(self.types, self.answers, seed)


class EvalSet(Questions):
    """The fresh evaluation questions and captions, rendered once for every row."""

    def __init__(self, spec: dict) -> None:
        super().__init__(spec["questions"], spec["seed"])
        captions = MiniCaptions(spec["captions"], spec["seed"])
        caption_items = [captions[i] for i in range(len(captions))]
        self.caption_pixels = torch.stack([c["pixels"] for c in caption_items])
        self.caption_prompts = [c["prompt"] for c in caption_items]
        self.references = [captions.references(i) for i in range(len(captions))]
        self.spec = spec


def evaluate_row(model: MiniVLM, data: EvalSet, progress: bool = False) -> dict:
    """Clean exact match, CIDEr-D, APGD-CE accuracy at 2/255 and 4/255 (worst case per sample), targeted success at
    4/255, the gradient-masking warnings."""
    spec = data.spec
    model = model.eval()
    k = min(spec["attack_questions"], len(data.prompts))
    robust = robust_evaluate_vlm(model, data.pixels[:k], data.prompts[:k], [[a] for a in data.answers[:k]], "vqa",
                                 "apgd-ce", [parse_eps(e) for e in EVAL_EPS], steps=spec["steps"], seed=spec["seed"],
                                 question_types=data.types[:k], steps_check=spec["steps_check"], progress=progress)
    with torch.no_grad():
        answers = generate_answers(model, data.pixels, data.prompts)
        clean = sum(exact_match(a, b) for a, b in zip(answers, data.answers)) / len(answers)
        captions = generate_answers(model, data.caption_pixels, data.caption_prompts, max_new_tokens=24)
    cider, _ = cider_d(captions, data.references)
    t = min(spec["targeted"], len(data.prompts))
    success, _ = targeted_success(model, data.pixels[:t], data.prompts[:t], data.targets[:t], "apgd-ce",
                                  parse_eps(TARGETED_EPS), steps=spec["steps"], seed=spec["seed"])
    metrics = robust.metrics()
    return {"clean": clean, "cider": cider,
            "robust": {e: metrics["worst_case"][e] for e in EVAL_EPS},
            "targeted_success": {TARGETED_EPS: success},
            "attacked_clean": metrics["clean"], "warnings": metrics["warnings"]}


def confirm_scores(model: MiniVLM, questions: Questions, eps: str, steps: int, seed: int) -> dict:
    """Clean exact match and APGD-CE accuracy at ``eps`` (worst case per question) on ``questions``, every
    clean-correct one attacked (``steps`` steps), with the per-question scores a paired comparison reads."""
    epsilon = parse_eps(eps)
    evaluation = robust_evaluate_vlm(model.eval(), questions.pixels, questions.prompts,
                                     [[a] for a in questions.answers], "vqa", "apgd-ce", [epsilon], steps=steps,
                                     seed=seed, steps_check=False)
    clean, robust = evaluation.clean_scores, evaluation.worst_case_scores(epsilon)
    return {"clean": float(clean.mean()), "robust": {eps: float(robust.mean())}, "n": len(questions.prompts),
            "clean_scores": [int(v) for v in clean.tolist()], "robust_scores": [int(v) for v in robust.tolist()],
            "warnings": evaluation.warnings}
