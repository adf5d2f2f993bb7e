"""The public-test extractor on the real HumanEval prompts: every example style the
prompts use, checked against asserts written by hand from the prompt text; the prompts
that yield nothing; and (with Docker) every canonical solution run against its public
tests, which only the prompts' own mistakes fail."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from reason.plugins.public_tests import public_test_sources, public_tests

HUMANEVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz"


@pytest.fixture(scope="module")
def records() -> dict[str, dict]:
    with gzip.open(HUMANEVAL, "rt") as fh:
        return {r["task_id"]: r for r in map(json.loads, fh)}


def sources(records, number: int) -> list[str]:
    record = records[f"HumanEval/{number}"]
    return public_test_sources(record["prompt"], record["entry_point"])


# Written by hand from each prompt's docstring (not from the extractor's output).
EXPECTED = {
    # doctest: ">>> call" then the output line
    0: [
        "assert has_close_elements([1.0, 2.0, 3.0], 0.5) == False",
        "assert has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3) == True",
    ],
    # doctest with no output line: None
    12: ["assert longest([]) == None", "assert longest(['a', 'b', 'c']) == 'a'", "assert longest(['a', 'bb', 'ccc']) == 'ccc'"],
    # doctest wrapped in round() and followed by a comment
    32: ["assert round(find_zero([1, 2]), 2) == -0.5", "assert round(find_zero([-6, 11, -6, 1]), 2) == 1.0"],
    # doctest whose output spans two lines
    113: [
        "assert odd_count(['1234567']) == ['the number of odd elements 4n the str4ng 4 of the 4nput.']",
        "assert odd_count(['3', '11111111']) == ['the number of odd elements 1n the str1ng 1 of the 1nput.', "
        "'the number of odd elements 8n the str8ng 8 of the 8nput.']",
    ],
    # ">>> call == value" on one line, and one with the "==" missing
    116: [
        "assert sort_array([1, 5, 2, 3, 4]) == [1, 2, 3, 4, 5]",
        "assert sort_array([-2, -3, -4, -5, -6]) == [-6, -5, -4, -3, -2]",
        "assert sort_array([1, 0, 2, 3, 4]) == [0, 1, 2, 3, 4]",
    ],
    # an escape in the docstring source stays in its string
    51: [
        "assert remove_vowels('') == ''",
        "assert remove_vowels('abcdef\\nghijklm') == 'bcdf\\nghjklm'",
        "assert remove_vowels('abcdef') == 'bcdf'",
        "assert remove_vowels('aaaaa') == ''",
        "assert remove_vowels('aaBAA') == 'B'",
        "assert remove_vowels('zbcd') == 'zbcd'",
    ],
    # f(x) == y
    69: [
        "assert search([4, 1, 2, 2, 3, 1]) == 2",
        "assert search([1, 2, 2, 3, 3, 3, 4, 4, 4]) == 3",
        "assert search([5, 5, 4, 4, 4]) == -1",
    ],
    # f(x) ➞ y
    72: [
        "assert will_it_fly([1, 2], 5) == False",
        "assert will_it_fly([3, 2, 3], 1) == False",
        "assert will_it_fly([3, 2, 3], 9) == True",
        "assert will_it_fly([3], 5) == True",
    ],
    # f(x) -> y, then a worked result whose last value counts
    67: [
        "assert fruit_distribution('5 apples and 6 oranges', 19) == 8",
        "assert fruit_distribution('0 apples and 1 oranges', 3) == 2",
        "assert fruit_distribution('2 apples and 3 oranges', 100) == 95",
        "assert fruit_distribution('100 apples and 1 oranges', 120) == 19",
    ],
    # f(x) => y with lower-case true / false
    76: [
        "assert is_simple_power(1, 4) == True",
        "assert is_simple_power(2, 2) == True",
        "assert is_simple_power(8, 2) == True",
        "assert is_simple_power(3, 2) == False",
        "assert is_simple_power(3, 1) == False",
        "assert is_simple_power(5, 3) == False",
    ],
    # f(x) ==> y
    155: ["assert even_odd_count(-12) == (1, 1)", "assert even_odd_count(123) == (1, 2)"],
    # f(x) = y
    102: ["assert choose_num(12, 15) == 14", "assert choose_num(13, 12) == -1"],
    # "Example:" then f(x) == y with 6.00
    71: ["assert triangle_area(3, 4, 5) == 6.0", "assert triangle_area(1, 2, 10) == -1"],
    # "For example:" ... f(x) should return y.
    97: [
        "assert multiply(148, 412) == 16",
        "assert multiply(19, 28) == 72",
        "assert multiply(2020, 1851) == 0",
        "assert multiply(14, -15) == 20",
    ],
    # f(x) returns y
    86: [
        "assert anti_shuffle('Hi') == 'Hi'",
        "assert anti_shuffle('hello') == 'ehllo'",
        "assert anti_shuffle('Hello World!!!') == 'Hello !!!Wdlor'",
    ],
    # f(x)   # returns "y"
    79: ["assert decimal_to_binary(15) == 'db1111db'", "assert decimal_to_binary(32) == 'db100000db'"],
    # f(x) # => 'y' (a remark in parentheses)
    141: ["assert file_name_check('example.txt') == 'Yes'", "assert file_name_check('1example.dll') == 'No'"],
    # "* f(x) => y" list items
    88: [
        "assert sort_array([]) == []",
        "assert sort_array([5]) == [5]",
        "assert sort_array([2, 4, 3, 0, 1, 5]) == [0, 1, 2, 3, 4, 5]",
        "assert sort_array([2, 4, 3, 0, 1, 5, 6]) == [6, 5, 4, 3, 2, 1, 0]",
    ],
    # "for f(x) == y"
    150: ["assert x_or_y(7, 34, 12) == 34", "assert x_or_y(15, 8, 5) == 5"],
    # a call written over several lines
    87: [
        "assert get_row([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 1, 6], [1, 2, 3, 4, 5, 1]], 1) == "
        "[(0, 0), (1, 4), (1, 0), (2, 5), (2, 0)]",
        "assert get_row([], 1) == []",
        "assert get_row([[], [1], [1, 2, 3]], 3) == [(2, 2)]",
    ],
    # doctests plus a note's prose: 'For example closest_integer("14.5") should return 15 and ...'
    99: [
        "assert closest_integer('10') == 10",
        "assert closest_integer('15.3') == 15",
        "assert closest_integer('14.5') == 15",
        "assert closest_integer('-14.5') == -15",
    ],
    # "For x = v the output should be y."
    78: [
        "assert hex_key('AB') == 1",
        "assert hex_key('1077E') == 2",
        "assert hex_key('ABED1A33') == 4",
        "assert hex_key('123456789ABCDEF0') == 6",
        "assert hex_key('2020') == 2",
    ],
    # "For N = v, <prose> the output should be y."
    84: ["assert solve(1000) == '1'", "assert solve(150) == '110'", "assert solve(147) == '1100'"],
    # "For s = v, c = w, the result should be y"
    112: [
        "assert reverse_delete('abcde', 'ae') == ('bcd', False)",
        "assert reverse_delete('abcdef', 'b') == ('acdef', False)",
        "assert reverse_delete('abcdedcba', 'ab') == ('cdedc', True)",
    ],
    # "Input: v / Output: y"
    68: [
        "assert pluck([4, 2, 3]) == [2, 1]",
        "assert pluck([1, 2, 3]) == [2, 1]",
        "assert pluck([]) == []",
        "assert pluck([5, 0, 3, 0, 4, 2]) == [0, 1]",
    ],
    # "Input: arr = v, k = w / Output: y # remark"
    122: ["assert add_elements([111, 21, 3, 4000, 5, 6, 7, 8, 9], 4) == 24"],
    # "Input:" then "name : value" lines whose names are not the parameters' (by position)
    115: [
        "assert max_fill([[0, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]], 1) == 6",
        "assert max_fill([[0, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 1, 1]], 2) == 5",
        "assert max_fill([[0, 0, 0], [0, 0, 0]], 5) == 0",
    ],
    # "arr = v" ... "return y" walk-throughs
    105: [
        "assert by_length([2, 1, 1, 4, 5, 8, 2, 3]) == ['Eight', 'Five', 'Four', 'Three', 'Two', 'Two', 'One', 'One']",
        "assert by_length([]) == []",
        "assert by_length([1, -1, 55]) == ['One']",
    ],
    # definitions that read as examples where the arguments are values; prose calls dropped
    46: [
        "assert fib4(5) == 4",
        "assert fib4(6) == 8",
        "assert fib4(7) == 14",
        "assert fib4(0) == 0",
        "assert fib4(1) == 0",
        "assert fib4(2) == 2",
        "assert fib4(3) == 0",
    ],
    # f(x) == y, the worked form "== 1 + 9 + 0 + 0 = 10"
    151: [
        "assert double_the_difference([1, 3, 2, 0]) == 10",
        "assert double_the_difference([-1, -2, 0]) == 0",
        "assert double_the_difference([9, -2]) == 81",
        "assert double_the_difference([0]) == 0",
    ],
    # an unreadable value ("" "aaaaaaa") is skipped, the others kept
    158: ["assert find_max(['name', 'of', 'string']) == 'string'", "assert find_max(['name', 'enam', 'game']) == 'enam'"],
}


@pytest.mark.parametrize("number", sorted(EXPECTED))
def test_each_example_style_gives_the_hand_written_asserts(records, number):
    assert sources(records, number) == EXPECTED[number]


# No readable example: none at all (38, 41, 50, 83), arguments that are not values
# ("is_happy(a) => False"), another function's name (81's grade_equation, 149's list_sort),
# or a walk-through without a call (160).
NO_TESTS = {38, 41, 50, 80, 81, 83, 149, 160}


def test_how_many_prompts_yield_tests(records):
    empty = {int(task_id.split("/")[1]) for task_id, r in records.items() if not public_tests(r["prompt"], r["entry_point"])}
    assert empty == NO_TESTS
    assert len(records) - len(empty) == 156
    total = sum(len(public_tests(r["prompt"], r["entry_point"])) for r in records.values())
    assert total == 453


def test_every_test_is_one_assert_that_calls_the_entry_point(records):
    import ast

    for record in records.values():
        for test in public_tests(record["prompt"], record["entry_point"]):
            (node,) = ast.parse(test.source).body
            assert isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare)
            names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            assert record["entry_point"] in names
            ast.literal_eval(test.expected)  # the expected side is a plain value
            assert test.style in {"doctest", "inline", "for-output", "input-output", "assign-return"}


def test_prose_and_definitions_are_not_tests(records):
    # 130 defines the sequence with tri(n) = ...; only literal calls with literal results count
    assert sources(records, 130) == ["assert tri(1) == 3", "assert tri(4) == 3", "assert tri(3) == [1, 3, 2, 8]"]
    assert sources(records, 63)[:2] == ["assert fibfib(1) == 0", "assert fibfib(5) == 4"]
    assert not any("fibfib(n" in s for s in sources(records, 63))
    # "Write a function next_smallest() that returns ..." is prose, not a test
    assert all("next_smallest()" not in s for s in sources(records, 90))


def test_extraction_never_runs_prompt_text():
    evil = (
        "def f(x):\n"
        '    """\n'
        "    >>> f(__import__('os').system('touch /tmp/reason-pwned'))\n"
        "    1\n"
        "    f(1) == __import__('os').getcwd()\n"
        "    f(2) == [1, 2]\n"
        "    >>> f(3)\n"
        "    open('/etc/passwd').read()\n"
        '    """\n'
    )
    tests = public_test_sources(evil, "f")
    # calls with non-literal arguments and non-literal results are dropped; a doctest output
    # that is not a value is compared as text, as doctest does
    assert tests == ["assert repr(f(3)) == \"open('/etc/passwd').read()\"", "assert f(2) == [1, 2]"]
    assert not Path("/tmp/reason-pwned").exists()


def test_no_docstring_or_unparsable_prompt_gives_no_tests():
    assert public_tests("def f(x):\n    pass\n", "f") == []
    assert public_tests("def f(x:\n", "f") == []
    assert public_tests('def g(x):\n    """>>> g(1)\n    2\n    """\n', "f") == []


@pytest.mark.docker
def test_canonical_solutions_pass_their_public_tests_but_for_the_prompts_own_mistakes(records):
    """Every canonical solution against its public tests in the sandbox: a parser bug
    would fail a right program. The only failures are examples the prompts get wrong."""
    from reason import Config, ScoreRequest, Step, Task
    from reason.plugins.verifiers.sandbox import SandboxVerifier
    from reason.sandboxes.engine import EngineUnavailable, connect

    try:
        connect().close()
    except EngineUnavailable as exc:
        pytest.skip(str(exc))
    tasks = [
        Task(
            question=r["prompt"], id=r["task_id"], kind="code",
            metadata={"prompt": r["prompt"], "entry_point": r["entry_point"],
                      "public_tests": public_test_sources(r["prompt"], r["entry_point"])},
        )
        for r in records.values()
    ]
    verifier = SandboxVerifier(Config(options={"sandbox_workers": 2, "sandbox_pool": 2}))
    try:
        scores = verifier.score(
            [ScoreRequest(task=t, prompt="", steps=(Step(text=records[t.id]["canonical_solution"]),)) for t in tasks]
        )
    finally:
        verifier.close()
    verdicts = {t.id: s for t, s in zip(tasks, scores)}
    failed = {int(i.split("/")[1]) for i, s in verdicts.items() if s.passed is False}
    unverified = {int(i.split("/")[1]) for i, s in verdicts.items() if s.passed is None}
    assert unverified == NO_TESTS
    # 47: median(...) is 8.0, the prompt says 15.0; 116: the examples contradict the
    # reference; 130: tri(n) in the prose is the n-th number, the function returns a
    # list; 148: ("Venus") is a string, the function returns a one-element tuple
    assert failed == {47, 116, 130, 148}, {i: verdicts[f"HumanEval/{i}"].feedback for i in failed}
    assert "returned 8.0, expected 15.0" in verdicts["HumanEval/47"].feedback
