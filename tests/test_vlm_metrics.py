"""VQAv2 accuracy and normalization, exact match, targeted success, CIDEr-D: hand-worked cases and closed forms."""

from __future__ import annotations

import math

import pytest

from vlalign.evaluation.captioning import cider_d, tokenize_caption
from vlalign.evaluation.vqa import (
    accuracy_by_type, exact_match, normalize_answer, process_digit_article, process_punctuation, targeted_success_rate,
    vqa_accuracy,
)


@pytest.mark.parametrize("text, expected", [
    ("Two.", "2"), ("the dog", "dog"), ("A Red Car!", "red car"), ("yes", "yes"), ("dont", "don't"),
    ("couldnt've", "couldn't've"), ("3,000", "3000"), ("top-left", "top left"), ("1.5", "1.5"),
    ("  none  ", "0"), ("it's (maybe) blue", "it's maybe blue"), ("an apple; a pear", "apple pear"),
])
def test_normalize_answer_hand_cases(text, expected):
    assert normalize_answer(text) == expected


def test_punctuation_rules_of_the_official_script():
    assert process_punctuation("a-b") == "a b"          # a mark touching no space becomes a space
    assert process_punctuation("a - b") == "a  b"       # a mark next to a space is deleted
    assert process_punctuation("3,000 - 4") == "3000  4"  # digit,digit anywhere: every mark is deleted
    assert process_punctuation("end.") == "end" and process_punctuation("2.5") == "2.5"
    assert process_digit_article("The Ten Apples") == "10 apples"


def _closed_form(matches: int, n: int = 10) -> float:
    """m of n human answers equal the prediction: the left-out answer is a match m times (m − 1 others remain)."""
    return (matches * min(1.0, (matches - 1) / 3) + (n - matches) * min(1.0, matches / 3)) / n if matches else 0.0


@pytest.mark.parametrize("matches", range(0, 11))
def test_vqa_accuracy_closed_form(matches):
    answers = ["2"] * matches + [f"other{i}" for i in range(10 - matches)]
    assert vqa_accuracy("2", answers) == pytest.approx(_closed_form(matches))


def test_vqa_accuracy_hand_worked():
    answers = ["2", "2", "2", "3", "3", "4", "5", "6", "7", "8"]
    assert vqa_accuracy("2", answers) == pytest.approx(0.9)   # (3·2/3 + 7·1) / 10
    assert vqa_accuracy("4", answers) == pytest.approx(0.3)   # (1·0 + 9·1/3) / 10
    assert vqa_accuracy("Two.", answers) == pytest.approx(0.9)  # answers disagree: normalized
    assert vqa_accuracy("9", answers) == 0.0
    # The official quirk: with unanimous answers nothing is normalized, so "two" does not match "2".
    assert vqa_accuracy("two", ["2"] * 10) == 0.0
    assert vqa_accuracy("2", ["2"] * 10) == 1.0
    assert vqa_accuracy("YES", ["yes"] * 10) == 1.0  # the comparison is case-insensitive
    with pytest.raises(ValueError):
        vqa_accuracy("2", [])


def test_exact_match_accuracy_by_type_and_targeted_success():
    assert exact_match("Top Left.", "top left") and exact_match("three", "3") and not exact_match("circle", "ring")
    result = accuracy_by_type([True, False, True, True], ["shape", "shape", "count", "where"])
    assert result == {"shape": 0.5, "count": 1.0, "where": 1.0, "all": 0.75}
    assert targeted_success_rate(["moon", "Star", "ring"], ["moon", "star", "heart"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 results for 1 questions"):
        accuracy_by_type([True, False], ["shape"])


def test_cider_d_hand_worked():
    # Two images, one reference each: every n-gram has document frequency 1, idf = log 2, so an exact candidate's
    # 1- and 2-gram cosines are 1 and its 3-, 4-gram vectors are empty: (1 + 1 + 0 + 0) / 4 · 10 = 5.
    score, per_image = cider_d(["a b", "c d"], [["a b"], ["c d"]])
    assert per_image == pytest.approx([5.0, 5.0]) and score == pytest.approx(5.0)
    # Candidate "a": unigram cosine 1/√2, no bigram, length penalty exp(−(1 − 2)² / (2·6²)).
    score, per_image = cider_d(["a", "c d"], [["a b"], ["c d"]])
    expected = (1 / math.sqrt(2)) / 4 * 10 * math.exp(-1 / 72)
    assert per_image == pytest.approx([expected, 5.0]) and score == pytest.approx((expected + 5.0) / 2)
    # A candidate sharing nothing with its references scores 0; order of images does not matter.
    assert cider_d(["x y", "c d"], [["a b"], ["c d"]])[1][0] == 0.0
    assert cider_d(["c d", "a"], [["c d"], ["a b"]])[1] == pytest.approx([5.0, expected])


def test_cider_d_tokenizes_and_checks_its_input():
    assert tokenize_caption("A red, round Star.") == "a red round star"
    assert cider_d(["A B.", "c, d"], [["a b"], ["C D"]])[0] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="at least two images"):
        cider_d(["a"], [["a"]])
    with pytest.raises(ValueError, match="no reference"):
        cider_d(["a", "b"], [["a"], []])
