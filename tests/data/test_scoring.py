from __future__ import annotations

import math

import pytest

from tokenred.scoring import (
    accuracy,
    all_correct_accuracy,
    extract_letter,
    extract_letter_paper,
    grouped_accuracy,
    letter_list,
    option_letters,
    slug,
)

OPTIONS = ("clap proudly", "the lady sitting down", "lay on floor", "crawl")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("  c  ", "C"),
        ("(C)", "C"),
        ("**D**", "D"),
        ("B. Candles.", "B"),
        ("C) lay on floor", "C"),
        ("The best answer is: C", "C"),
        ("The answer is (A).", "A"),
        ("Answer: D", "D"),
        ("Best answer: C", "C"),  # the reference parser returns "B" here
        ("Best option: A", "A"),
        ("The correct option is B.", "B"),
        ("I think the answer is b.", "B"),
        ("Because of the candles, D", "D"),  # "B" inside "Because" is not a letter
        ("Option C is correct because ...", "C"),
        ("A is correct.", "A"),
        ("A baby claps proudly, so C", "C"),  # article "A" skipped
        ("lay on floor", "C"),  # no letter: option text
        ("The baby would crawl.", "D"),
        ("", None),
        ("I do not know.", None),
        ("E", None),  # not an allowed letter for 4 options
        (
            "Everything happens quickly and nobody can tell what the answer is here",
            None,
        ),
    ],
)
def test_extract_letter_failure_modes(text: str, expected: str | None) -> None:
    assert extract_letter(text, "ABCD", options=OPTIONS) == expected


def test_extract_letter_allowed_set_and_ambiguous_options() -> None:
    assert extract_letter("E", "ABCDE") == "E"
    assert extract_letter("The answer is E", "ABCDE") == "E"
    # Two options of equal length both present: ambiguous, no guess.
    assert (
        extract_letter("red and blue", "ABCD", options=("red", "blue", "x", "y"))
        is None
    )
    # The longer option wins when one contains the other.
    opts = ("red", "red square", "blue", "green")
    assert extract_letter("the red square", "ABCD", options=opts) == "B"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The best answer is C", "C"),
        ("Answer: D", "D"),
        ("Best answer: C", "B"),  # fused prefix pair: "B" of "Best" is taken
        ("Because D", "B"),  # first allowed capital anywhere
        ("word " * 11, ""),  # > 10 words, no letter
        ("no capital letters", ""),
    ],
)
def test_paper_parser_reproduces_reference_quirks(text: str, expected: str) -> None:
    assert extract_letter_paper(text, "ABCD") == expected


def test_letter_helpers() -> None:
    assert option_letters(5) == "ABCDE"
    assert letter_list("ABC") == "(A, B, or C)"
    assert letter_list("ABCDE") == "(A, B, C, D, or E)"
    assert slug("Counting Problem") == "counting_problem"
    with pytest.raises(ValueError):
        option_letters(0)


def test_accuracy_helpers() -> None:
    rows = [
        {"correct": True, "g": "a", "v": 1},
        {"correct": False, "g": "a", "v": 1},
        {"correct": True, "g": "b", "v": 2},
        {"correct": True, "g": None, "v": 2},
    ]
    assert accuracy(rows) == 75.0
    assert math.isnan(accuracy([]))
    assert grouped_accuracy(rows, lambda r: r["g"]) == {"a": 50.0, "b": 100.0}
    assert all_correct_accuracy(rows, lambda r: r["v"]) == 50.0
