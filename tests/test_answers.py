from reason.answers import extract_answer, extract_code, is_equivalent, vote


def test_extract_boxed_with_nested_braces():
    assert extract_answer("so \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert extract_answer("first \\boxed{3} then \\boxed{4}") == "4"


def test_extract_answer_is_phrase_and_last_number():
    assert extract_answer("Adding them up.\n\nThe answer is 1,234.") == "1234"
    assert extract_answer("Final answer: $72$") == "72"
    assert extract_answer("She has 5 apples and eats 2, so 3 remain") == "3"
    assert extract_answer("no digits here") is None


def test_equivalence_numbers_and_latex():
    assert is_equivalent("0.5", "\\frac{1}{2}")
    assert is_equivalent("72", "72.0")
    assert is_equivalent("1,000", "1000")
    assert not is_equivalent("3", "4")
    assert is_equivalent("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})")


def test_vote_groups_equivalent_answers_and_weights():
    assert vote(["1/2", "3", "0.5", None]) == ("1/2", 2.0)
    assert vote(["3", "4"], [0.2, 0.9]) == ("4", 0.9)
    assert vote([None, None]) == (None, 0.0)
    assert vote(["7", "8"]) == ("7", 1.0)  # ties go to the first seen


def test_extract_code_takes_the_last_defining_block():
    text = "Here:\n```python\ndef f():\n    return 1\n```\nand ```\nx\n```"
    assert extract_code(text) == "def f():\n    return 1\n"
    fixed = text + "\nWait, fixed:\n```python\ndef f():\n    return 2\n```"
    assert extract_code(fixed) == "def f():\n    return 2\n"
    assert extract_code("def g(): pass") == "def g(): pass"
