"""Final answers: extract them from a solution, compare them, vote on them, choose one.

One module for all of it, used alike by the search policies (which answer to return) and
by ``reason eval`` (grading, and what a selection rule would have chosen):

- *extraction*: :func:`extract_answer` (math), :func:`extract_code` (programs);
- *equivalence*: :func:`is_equivalent` — numbers as numbers (``18``, ``18.0``, ``$18``,
  ``1,800`` vs ``1800``, ``7 apples``; a percentage is its number and its fraction), the
  rest with math-verify (a maintained LaTeX/sympy checker, so ``\\frac{1}{2}``, ``0.5``
  and ``1/2`` are one answer); ``percent=True`` (see :func:`asks_for_percent`) also lets
  a plain fraction match a percentage reference;
- *votes and choices*: :func:`group_answers`, :func:`vote` and :func:`choose` (naive,
  weighted, majority).

math-verify pulls in sympy, so it is imported on first use, not with ``import reason``.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from collections.abc import Sequence

_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?%?|-?\$?\.\d+%?"
_ANSWER_IS = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?\s*(?P<ans>\\boxed\{.*\}|\$[^$]+\$|[^\n]+)",
    re.IGNORECASE,
)
_LAST_NUMBER = re.compile(_NUMBER)


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : i].strip()
    return None


def _clean(answer: str) -> str:
    answer = answer.strip().strip("$").strip()
    answer = re.sub(r"^\\text\{(.*)\}$", r"\1", answer)
    return answer.rstrip(".").strip()


def extract_answer(text: str) -> str | None:
    """The final answer in ``text``: the last ``\\boxed{}``, else what follows
    "the answer is", else the last number. ``None`` when there is none."""
    boxed = _last_boxed(text)
    if boxed:
        return _clean(boxed)
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        tail = matches[-1].group("ans")
        inner = _last_boxed(tail)
        if inner:
            return _clean(inner)
        number = _LAST_NUMBER.search(tail)
        if number:
            return _normalize_number(number.group(0))
        cleaned = _clean(tail)
        if cleaned:
            return cleaned
    numbers = _LAST_NUMBER.findall(text)
    if numbers:
        return _normalize_number(numbers[-1])
    return None


def _normalize_number(raw: str) -> str:
    value = raw.replace(",", "").replace("$", "").strip()
    if value.endswith("."):
        value = value[:-1]
    return value


_PLAIN_NUMBER = re.compile(r"^[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$")
_UNIT_TAIL = re.compile(r"^(?P<num>[^a-zA-Z]*?)\s*(?:[a-zA-Z][a-zA-Z .]*)?$")
_PERCENT_ASK = re.compile(r"percent|%", re.IGNORECASE)

REL_TOL = 1e-6
"""Numbers within this relative tolerance are equal (``math.isclose``, with an absolute
floor of 1e-9 near zero): symmetric, so a vote groups the same answers in any order."""


def parse_number(text: str | None) -> tuple[float, bool] | None:
    """``(value, is_percent)`` when ``text`` is one plain number (``$1,800.00``, ``-3``,
    ``12.5%``, ``7 apples``), else ``None`` (LaTeX, expressions, tuples)."""
    if text is None:
        return None
    value = str(text).strip().replace("\\$", "").replace("$", "")
    value = value.replace("\\!", "").replace("{,}", ",").replace("\\,", "")
    value = value.strip().rstrip(".").strip()
    percent = False
    for mark in ("\\%", "%"):
        if value.endswith(mark):
            value, percent = value[: -len(mark)].strip(), True
            break
    if not _PLAIN_NUMBER.match(value):
        unit = _UNIT_TAIL.match(value)  # "7 apples", "18 dollars"
        if not unit or not _PLAIN_NUMBER.match(unit.group("num").strip()):
            return None
        value = unit.group("num").strip()
    try:
        return float(value.replace(",", "")), percent
    except ValueError:
        return None


def numbers_match(answer: str | None, reference: str | None, *, percent: bool = False) -> bool | None:
    """Compare two plain numbers; ``None`` when either is not one (the caller then needs a
    symbolic check). A value written with ``%`` may be read as its number or its fraction
    ("10%" is 10, how GSM8K states percentages, and 0.1, what it means); ``percent=True``
    (the question asks for a percentage) also lets a fraction answer (``0.1``) match a
    percentage reference (``10``)."""
    a, r = parse_number(answer), parse_number(reference)
    if a is None or r is None:
        return None
    (av, a_pct), (rv, r_pct) = a, r
    a_values = {av, av / 100} if a_pct else {av}
    if percent and not a_pct:
        a_values.add(av * 100)
    r_values = {rv, rv / 100} if r_pct else {rv}
    return any(math.isclose(x, y, rel_tol=REL_TOL, abs_tol=1e-9) for x in a_values for y in r_values)


@functools.lru_cache(maxsize=4096)
def is_equivalent(answer: str | None, reference: str | None, *, percent: bool = False) -> bool:
    """Whether two answers mean the same thing: the one equivalence of the project, for
    votes (any two answers) and for grading (an answer against its reference).

    Numbers compare as numbers (:func:`numbers_match`), anything else with math-verify.
    ``percent=True`` is for grading a question that asks for a percentage (see
    :func:`asks_for_percent`): then ``0.1`` also matches a reference of ``10``. An empty
    or missing answer is never equivalent to anything."""
    if answer is None or reference is None:
        return False
    a, b = _clean(str(answer)), _clean(str(reference))
    if not a or not b:
        return False
    if a == b:
        return True
    numeric = numbers_match(a, b, percent=percent)
    if numeric is not None:
        return numeric
    return math_verify_equal(_as_latex(a), _as_latex(b))


def asks_for_percent(question: str) -> bool:
    """Whether the question's last sentence asks for a percentage ("What percentage of
    the cars ...?"), so the dataset's number means percent (``is_equivalent(...,
    percent=asks_for_percent(question))``)."""
    sentences = [s for s in re.split(r"(?<=[.?!])\s+", question.strip()) if s.strip()]
    return bool(sentences) and bool(_PERCENT_ASK.search(sentences[-1]))


def _as_latex(text: str) -> str:
    return text if text.startswith(("\\(", "\\[")) else f"${text}$"


def math_verify_equal(answer: str, reference: str) -> bool:
    """math-verify's verdict on two LaTeX strings (``False`` when either cannot be parsed).

    math-verify bounds its work with ``signal.alarm``, which only the main thread may set,
    and searches run in the runtime's own thread: there its timeouts are turned off (the
    answers compared are short) and its warning that they are off is dropped."""
    try:
        from math_verify import parse, verify

        limit = 5 if threading.current_thread() is threading.main_thread() else None
        if limit is None:
            _quiet_math_verify()
        gold = parse(reference, parsing_timeout=limit)
        pred = parse(answer, parsing_timeout=limit)
        return bool(gold and pred and verify(gold, pred, timeout_seconds=limit))
    except Exception:  # math-verify can fail on odd LaTeX; fall back to "not equal"
        return False


@functools.cache
def _quiet_math_verify() -> None:
    def drop(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")

    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(drop)


def group_answers(answers: Sequence[str | None]) -> list[int | None]:
    """Cluster equivalent answers (the notion voting uses): group ids in order of first
    appearance; ``None`` for no answer."""
    representatives: list[str] = []
    groups: list[int | None] = []
    for answer in answers:
        if answer is None:
            groups.append(None)
            continue
        for gid, rep in enumerate(representatives):
            if is_equivalent(answer, rep):
                groups.append(gid)
                break
        else:
            representatives.append(answer)
            groups.append(len(representatives) - 1)
    return groups


def _tally(groups: Sequence[int | None], weights: Sequence[float | None]) -> tuple[int | None, float]:
    """The group with the largest total weight (ties: the group seen first) and its total.

    A weight below 0 counts as 0: a sample is evidence *for* its answer or none, never
    against it. Unclamped, a verifier whose scores can be negative (log-probabilities, a
    reward in [-1, 1]) would make each extra sample of an answer lower its total, so the
    answer with the fewest samples would win; clamped, such answers tie and the first seen
    wins, as in a plain vote. (Scores in [0, 1], as verifiers return, are unchanged.)"""
    totals: dict[int, float] = {}
    for group, weight in zip(groups, weights):
        if group is not None:
            totals[group] = totals.get(group, 0.0) + max(float(weight or 0.0), 0.0)
    if not totals:
        return None, 0.0
    winner = max(totals, key=lambda g: totals[g])  # dicts keep first-seen order; max keeps the first of equal totals
    return winner, totals[winner]


def vote(answers: Sequence[str | None], weights: Sequence[float] | None = None) -> tuple[str | None, float]:
    """Group equivalent answers and return the one with the largest total weight
    (weights default to 1: majority vote; negative weights count as 0). Ties go to the
    answer seen first. ``None`` answers do not vote."""
    groups = group_answers(answers)
    winner, total = _tally(groups, weights if weights is not None else [1.0] * len(answers))
    if winner is None:
        return None, 0.0
    return answers[groups.index(winner)], total


RULES = ("naive", "weighted", "majority")
"""The choice rules of :func:`choose`."""


def choose(
    answers: Sequence[str | None],
    scores: Sequence[float | None] | None = None,
    rule: str = "naive",
    groups: Sequence[int | None] | None = None,
) -> tuple[int | None, float]:
    """Which of N scored samples to answer with: ``(index, weight)``; ``(None, 0.0)``
    when there are no samples. The same rules serve the searches and ``reason eval``'s
    maj@n / weighted@n / naive@n.

    - ``naive``: the highest score (a missing score ranks lowest); weight = that score.
    - ``weighted``: the answer whose samples' scores sum highest (search-and-learn's
      weighted best-of-N), ``majority``: the most frequent answer (self-consistency);
      weight = the answer's total (see :func:`vote`), and the sample returned is the
      answer's best-scored one (ties: the first). When no sample has an answer, the
      naive choice.

    ``groups`` (from :func:`group_answers`) saves re-comparing answers when the same
    samples are chosen among many times."""
    if rule not in RULES:
        raise ValueError(f"unknown choice rule {rule!r}; one of {', '.join(RULES)}")
    if not answers:
        return None, 0.0
    scores = list(scores) if scores is not None else [None] * len(answers)
    rank = [s if s is not None else float("-inf") for s in scores]
    best = max(range(len(answers)), key=lambda i: rank[i])  # max keeps the first of equal scores
    if rule == "naive":
        return best, float(scores[best] or 0.0)
    groups = list(groups) if groups is not None else group_answers(answers)
    weights = [1.0] * len(answers) if rule == "majority" else scores
    winner, total = _tally(groups, weights)
    if winner is None:
        return best, 0.0
    members = [i for i, g in enumerate(groups) if g == winner]
    return max(members, key=lambda i: rank[i]), total


_CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(text: str) -> str:
    """The program in a completion: the last fenced code block that defines a function
    (after a reflection the path holds the broken program and then the fix), else the
    last block, else the whole text."""
    blocks = [block for block in _CODE_BLOCK.findall(text) if block.strip()]
    defining = [block for block in blocks if "def " in block]
    if defining:
        return defining[-1]
    if blocks:
        return blocks[-1]
    return text
