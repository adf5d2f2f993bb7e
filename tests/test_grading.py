"""Grading: tricky equivalences, numbers with units and percentages, and the real data's
own worked solutions graded against its references."""

import json
from pathlib import Path

import pytest

from reason import Config, Dataset, Task, get_registry
from reason.answers import (
    asks_for_percent,
    extract_answer,
    is_equivalent,
    numbers_match,
    parse_number,
    vote,
)
from reason.plugins.datasets import gsm8k_reference

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# --- the tricky equivalences of the issue ------------------------------------------------


def test_fraction_equals_decimal():
    assert is_equivalent("0.5", r"\frac{1}{2}")
    assert is_equivalent(r"\frac{1}{2}", "0.5")
    assert is_equivalent(r"\dfrac{1}{2}", "1/2")
    assert not is_equivalent("0.6", r"\frac{1}{2}")


def test_tuple_with_left_right_equals_plain_tuple():
    reference = r"\left( 3, \frac{\pi}{2} \right)"
    assert is_equivalent(r"(3,\frac{\pi}{2})", reference)
    assert is_equivalent(r"(3, \pi/2)", reference)
    assert not is_equivalent(r"(3,\pi)", reference)
    assert not is_equivalent(r"(\frac{\pi}{2}, 3)", reference)


def test_percent_equals_its_fraction_and_its_number():
    assert is_equivalent("10%", "0.1")
    assert is_equivalent(r"10\%", "0.1")
    assert is_equivalent("0.1", r"10\%")
    assert is_equivalent("10%", "10")  # GSM8K stores "What percentage ...?" answers as 10
    assert not is_equivalent("10%", "0.2")
    assert not is_equivalent("11%", "10")


def test_fraction_answer_matches_percentage_reference_only_when_the_question_asks_for_percent():
    gsm8k = get_registry().create("dataset", "gsm8k", Config())
    asks = Task(question="Of 50 cars, 10 are red. What percentage of the cars are red?", reference="20")
    plain = Task(question="A shirt costs $20 after a 10% discount. How much did it cost before?", reference="20")
    assert asks_for_percent(asks.question) and not asks_for_percent(plain.question)
    assert gsm8k.is_correct(asks, "0.2")
    assert gsm8k.is_correct(asks, "20%")
    assert gsm8k.is_correct(asks, "20")
    assert not gsm8k.is_correct(asks, "0.3")
    assert not gsm8k.is_correct(plain, "0.2")  # 0.2 is not 20 when nobody asked for percent
    assert gsm8k.is_correct(plain, "$20.00")


def test_core_equivalence_groups_percent_with_fraction_for_voting():
    assert is_equivalent("10%", "0.1")
    assert is_equivalent("10%", "10")
    assert not is_equivalent("10%", "0.2")
    assert vote(["10%", "0.1", "7"]) == ("10%", 2.0)


# --- numbers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("18", (18.0, False)),
        ("$18.00", (18.0, False)),
        ("\\$1,800", (1800.0, False)),
        ("-3.5", (-3.5, False)),
        ("12.5%", (12.5, True)),
        ("12.5\\%", (12.5, True)),
        ("7 apples", (7.0, False)),
        (".5", (0.5, False)),
        ("\\frac{1}{2}", None),
        ("(3, 4)", None),
        ("x = 5", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


def test_numbers_match_is_none_for_non_numbers_so_math_verify_decides():
    assert numbers_match(r"\frac{9}{2}", "4.5") is None
    assert is_equivalent(r"\frac{9}{2}", "4.5")
    assert is_equivalent("1,800", "1800") and is_equivalent("1800.0", "1800")
    assert not is_equivalent("1799", "1800")
    assert not is_equivalent(None, "3") and not is_equivalent("3", None)


def test_math_equal_symbolic_and_wrong_answers():
    assert is_equivalent(r"\frac{14}{3}", r"\dfrac{14}{3}")
    assert is_equivalent("90", r"90^\circ")
    assert is_equivalent(r"2\sqrt{2}", r"\sqrt{8}")
    assert is_equivalent(r"x^2+2x+1", r"(x+1)^2")
    assert not is_equivalent(r"\sqrt{3}", r"\sqrt{2}")
    assert not is_equivalent("", "3")
    assert not is_equivalent(None, "3")
    assert not is_equivalent(r"\frac{", "3")  # malformed LaTeX is simply wrong


def test_gsm8k_reference_is_the_number_after_the_hashes():
    assert gsm8k_reference("so 9 * 2 = 18\n#### 18") == "18"
    assert gsm8k_reference("...\n#### 1,450,000") == "1450000"
    assert gsm8k_reference("#### -3") == "-3"


def test_dataset_default_grading_is_math_aware():
    # Dataset.is_correct (the base class) grades through reason.answers.is_equivalent
    task = Task(question="q", reference=r"\frac{1}{2}")
    assert Dataset.is_correct(None, task, "0.5") and is_equivalent("0.5", r"\frac{1}{2}")
    assert not Dataset.is_correct(None, task, r"\frac{1}{3}") and not is_equivalent("0.5", r"\frac{1}{3}")


# --- the real data: references agree with the datasets' own solutions -----------------------


def test_math500_solutions_grade_correct_against_their_references():
    """The boxed answer of each MATH-500 worked solution must grade correct against the
    reference, and (almost never) against another problem's reference."""
    rows = [json.loads(line) for line in (DATA / "math500" / "test.jsonl").open()][:120]
    right = sum(is_equivalent(extract_answer(r["solution"]), r["answer"]) for r in rows)
    assert right >= 0.95 * len(rows), right
    shifted = sum(is_equivalent(extract_answer(a["solution"]), b["answer"]) for a, b in zip(rows, rows[1:]))
    assert shifted <= 0.05 * len(rows), shifted


def test_gsm8k_worked_solutions_grade_correct():
    dataset = get_registry().create("dataset", "gsm8k", Config())
    tasks = [t for _, t in zip(range(200), dataset.load())]
    for task in tasks:
        answer = extract_answer(task.metadata["solution"].replace("####", "The answer is"))
        assert dataset.is_correct(task, answer), (task.id, answer, task.reference)
    wrong = sum(dataset.is_correct(a, extract_answer(b.metadata["solution"])) for a, b in zip(tasks, tasks[1:]))
    assert wrong <= 10


def test_multiarith_targets_grade_as_numbers():
    dataset = get_registry().create("dataset", "multiarith", Config())
    tasks = list(dataset.load())
    assert all(dataset.is_correct(t, extract_answer(f"So they have {t.reference} left.")) for t in tasks)
    assert all(dataset.is_correct(t, f"{float(t.reference):.1f}") for t in tasks)
    assert not any(dataset.is_correct(t, str(float(t.reference) + 1)) for t in tasks)
