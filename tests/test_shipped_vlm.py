"""The embedded mini VLMs answer fresh questions as recorded in their metrics.json (skipped where not shipped)."""

import json

import pytest
import torch

from vlalign.data.vqa import QUESTION_TYPES, MiniVQA
from vlalign.evaluation.vqa import accuracy_by_type, exact_match, generate_answers
from vlalign.models.vlm_loading import EMBEDDED_VLMS, embedded_vlm_dir, load_vlm

N = 250
SEED = 31337  # neither the training data (seed 100) nor the recorded evaluation (seed 7)


@pytest.mark.parametrize("spec", sorted(EMBEDDED_VLMS))
def test_shipped_vlm_matches_its_recorded_exact_match(spec):
    folder = embedded_vlm_dir(spec)
    assert (folder / "config.json").is_file(), f"{spec} should be shipped in {folder}"
    torch.set_num_threads(1)
    model = load_vlm(spec)
    questions = MiniVQA(N, SEED)
    items = [questions[i] for i in range(N)]
    answers = generate_answers(model, torch.stack([i["pixels"] for i in items]), [i["prompt"] for i in items])
    measured = accuracy_by_type([exact_match(a, i["answer"]) for a, i in zip(answers, items)],
                                [i["question_type"] for i in items])
    recorded = json.loads((folder / "metrics.json").read_text())["exact_match"]
    assert set(QUESTION_TYPES) <= set(measured)
    # 250 fresh questions: the overall rate's standard error is at most 3.2 points; allow about 3 of them.
    assert abs(measured["all"] - recorded["all"]) <= 0.09, (measured, recorded)
    assert (folder / "PRETRAIN.md").is_file()
