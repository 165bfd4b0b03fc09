"""Question-answering metrics: exact match per question type, VQAv2 accuracy, targeted-attack success.

VQAv2 accuracy follows the official evaluation script (Antol et al. 2015; ``vqaEval.py`` of the VQA API): a
prediction scores min(#humans among the other nine who gave it / 3, 1), averaged over the ten leave-one-out
subsets of the ten human answers; answers are compared lower-cased after its punctuation, number-word, article and
contraction processing. Like the official script, that processing is applied only when the human answers
disagree (the official annotations are already normalized); :func:`normalize_answer` applies it always, and
exact match uses it on both sides, so ``"Two."`` matches ``"2"``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from vlalign.models.vlm import GenerativeVLM

_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!")
# The official pattern, typo included: "(?!<=\d)" is a negative lookahead for the text "<=" followed by a digit,
# not the intended lookbehind, so a period is dropped unless a digit follows it.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = ("a", "an", "the")
_CONTRACTIONS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd "
    "he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've mustn't must've "
    "needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't shouldn't've somebody'd've "
    "somebody'll somebody's someone'd someone'd've someone'll someone's something'd something'd've something'll "
    "that's there'd there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've "
    "weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll who's who've "
    "why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're "
    "you've"
).split()


def _contraction_table() -> dict[str, str]:
    """A contraction written with one of its apostrophes missing -> the contraction (``"dont"`` -> ``"don't"``,
    ``"couldnt've"`` -> ``"couldn't've"``). This is the rule behind the official table; the official table also
    has a few typos this omits (``"let's"`` and ``"she's"`` map to themselves there, ``"somebody'd"`` to
    ``"somebodyd"``, and its capitalized I-forms never match lower-cased text)."""
    table = {}
    for form in _CONTRACTIONS:
        for i, char in enumerate(form):
            if char == "'":
                table[form[:i] + form[i + 1:]] = form
    return table


_CONTRACTION_TABLE = _contraction_table()


def process_punctuation(text: str) -> str:
    """The official punctuation step: a mark next to a space (or any mark, in a text with a digit-comma-digit)
    is deleted, other marks become spaces; then periods not followed by a digit are deleted."""
    out = text
    for mark in _PUNCTUATION:
        if (mark + " " in text or " " + mark in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    # The official call passes re.UNICODE as sub's *count* argument: at most 32 periods are removed.
    return _PERIOD_STRIP.sub("", out, count=int(re.UNICODE))


def process_digit_article(text: str) -> str:
    """The official word step: lower-case, number words to digits, articles dropped, contractions restored."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTION_TABLE.get(w, w) for w in words)


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
    """An answer after the official processing, always applied: ``"The Two!"`` -> ``"2"``."""
    return process_digit_article(process_punctuation(_clean(text)))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2 accuracy of one prediction against the human answers (ten in VQAv2), as the official script
    computes it: mean over leave-one-out subsets of min(#matches / 3, 1)."""
    if not answers:
        raise ValueError("vqa_accuracy needs at least one human answer")
    truth = [_clean(a) for a in answers]
    guess = _clean(prediction)
    if len(set(truth)) > 1:
        truth = [process_digit_article(process_punctuation(a)) for a in truth]
        guess = process_digit_article(process_punctuation(guess))
    scores = []
    for left_out in range(len(truth)):
        matches = sum(1 for j, a in enumerate(truth) if j != left_out and a.lower() == guess.lower())
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


def exact_match(prediction: str, answer: str) -> bool:
    """Whether two answers are equal after :func:`normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(answer)


def accuracy_by_type(correct: Sequence[bool], question_types: Sequence[str]) -> dict[str, float]:
    """Mean correctness per question type, plus ``"all"`` over every question."""
    if len(correct) != len(question_types):
        raise ValueError(f"got {len(correct)} results for {len(question_types)} questions")
    if not correct:
        raise ValueError("no questions to score")
    out = {}
    for kind in dict.fromkeys(question_types):
        picked = [bool(c) for c, t in zip(correct, question_types) if t == kind]
        out[kind] = sum(picked) / len(picked)
    out["all"] = sum(bool(c) for c in correct) / len(correct)
    return out


def targeted_success_rate(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """Fraction of predictions that equal the attacker's chosen answer (after normalization)."""
    if len(predictions) != len(targets):
        raise ValueError(f"got {len(predictions)} predictions for {len(targets)} targets")
    if not predictions:
        raise ValueError("no predictions to score")
    return sum(exact_match(p, t) for p, t in zip(predictions, targets)) / len(predictions)


@torch.no_grad()
def generate_answers(model: GenerativeVLM, pixels: torch.Tensor, prompts: Sequence[str], batch_size: int = 128,
                     max_new_tokens: int = 8) -> list[str]:
    """Greedy answers for uint8 or [0, 1] float images ``[N, 3, H, W]``, in consecutive batches."""
    if len(prompts) != pixels.shape[0]:
        raise ValueError(f"got {pixels.shape[0]} images for {len(prompts)} prompts")
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = pixels[start: start + batch_size]
        batch = batch.float().div(255.0) if batch.dtype == torch.uint8 else batch
        out += model.generate(batch.to(model.device), list(prompts[start: start + batch_size]),
                              max_new_tokens=max_new_tokens)
    return out
