"""Grading: is a model's final answer right for a benchmark problem?

Each benchmark states its answers its own way, so each gets the comparison it needs,
built on maintained checkers rather than string equality:

- MATH-500 answers are LaTeX (``\\frac{14}{3}``, ``\\left( 3, \\frac{\\pi}{2} \\right)``):
  compared with math-verify (sympy under the hood), after a cheap numeric check.
- GSM8K (the number after ``#### ``) and MultiArith are numbers: compared as numbers,
  so ``18``, ``18.0``, ``$18`` and ``1,800`` vs ``1800`` grade as they should. A
  percentage answer matches its number (``10%`` vs reference ``10``) and its fraction
  (``10%`` vs ``0.1``); a plain fraction matches a percentage reference only when the
  question asks for a percentage (GSM8K stores "What percentage ...?" answers as ``10``).
- HumanEval programs are run against the problem's tests in the Docker sandbox (the
  ``sandbox`` verifier, looked up through the plugin registry like any other component).

math-verify pulls in sympy, and the sandbox docker: both are imported on first use.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from reason import answers

if TYPE_CHECKING:
    from reason import Config, Dataset, Task, Verifier

_NUMBER = re.compile(r"^[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$")
_UNIT_TAIL = re.compile(r"^(?P<num>[^a-zA-Z]*?)\s*(?:[a-zA-Z][a-zA-Z .]*)?$")
_PERCENT_ASK = re.compile(r"percent|%", re.IGNORECASE)

REL_TOL = 1e-6


def gsm8k_reference(solution: str) -> str:
    """The final answer of a GSM8K worked solution: the number after ``#### ``, without
    thousands separators."""
    _, sep, tail = solution.rpartition("####")
    value = (tail if sep else solution).strip()
    return value.replace(",", "")


def parse_number(text: str | None) -> tuple[float, bool] | None:
    """``(value, is_percent)`` when ``text`` is one plain number (``$1,800.00``, ``-3``,
    ``12.5%``, ``7 apples``), else ``None`` (LaTeX, expressions, tuples)."""
    if text is None:
        return None
    value = str(text).strip().strip("$").strip()
    value = value.replace("\\$", "").replace("\\!", "").replace("{,}", ",").replace("\\,", "")
    value = value.lstrip("$").strip().rstrip(".").strip()
    percent = False
    for mark in ("\\%", "%"):
        if value.endswith(mark):
            value, percent = value[: -len(mark)].strip(), True
            break
    if not _NUMBER.match(value):
        unit = _UNIT_TAIL.match(value)  # "7 apples", "18 dollars"
        if not unit or not _NUMBER.match(unit.group("num").strip()):
            return None
        value = unit.group("num").strip()
    try:
        return float(value.replace(",", "")), percent
    except ValueError:
        return None


def _close(x: float, y: float) -> bool:
    return math.isclose(x, y, rel_tol=REL_TOL, abs_tol=1e-9)


def numbers_match(answer: str | None, reference: str | None, *, percent: bool = False) -> bool | None:
    """Compare two plain numbers; ``None`` when either is not one (the caller then needs a
    symbolic check). A value written with ``%`` may be read as its number or its fraction;
    ``percent=True`` (the question asks for a percentage) also lets a fraction answer
    (``0.1``) match a percentage reference (``10``)."""
    a, r = parse_number(answer), parse_number(reference)
    if a is None or r is None:
        return None
    (av, a_pct), (rv, r_pct) = a, r
    a_values = {av, av / 100} if a_pct else {av}
    if percent and not a_pct:
        a_values.add(av * 100)
    r_values = {rv, rv / 100} if r_pct else {rv}
    return any(_close(x, y) for x in a_values for y in r_values)


def math_verify_equal(answer: str, reference: str) -> bool:
    """math-verify's verdict on a LaTeX answer against a LaTeX reference (``False`` when
    either cannot be parsed)."""
    return answers.math_verify_equal(_as_latex(answer), _as_latex(reference))


def _as_latex(text: str) -> str:
    text = text.strip()
    if text.startswith("$") or text.startswith("\\(") or text.startswith("\\["):
        return text
    return f"${text}$"


def math_equal(answer: str | None, reference: str | None) -> bool:
    """Grade a MATH-style answer: numbers as numbers, anything else with math-verify."""
    if answer is None or reference is None:
        return False
    answer, reference = str(answer).strip(), str(reference).strip()
    if not answer:
        return False
    if answer == reference:
        return True
    numeric = numbers_match(answer, reference)
    if numeric is not None:
        return numeric
    return math_verify_equal(answer, reference)


def numeric_equal(answer: str | None, reference: str | None, *, percent: bool = False) -> bool:
    """Grade a numeric answer (GSM8K, MultiArith). Answers the model wrote as LaTeX
    (``\\frac{9}{2}``) fall back to math-verify."""
    if answer is None or reference is None:
        return False
    numeric = numbers_match(answer, reference, percent=percent)
    if numeric is not None:
        return numeric
    return math_verify_equal(str(answer), str(reference))


def is_equivalent(answer: str | None, reference: str | None) -> bool:
    """Default grading of a math answer against its reference (see :func:`math_equal`)."""
    return math_equal(answer, reference)


def asks_for_percent(question: str) -> bool:
    """Whether the question's last sentence asks for a percentage ("What percentage of
    the cars ...?"), so the dataset's number means percent."""
    sentences = [s for s in re.split(r"(?<=[.?!])\s+", question.strip()) if s.strip()]
    return bool(sentences) and bool(_PERCENT_ASK.search(sentences[-1]))


def grade_many(dataset: Dataset, task: Task, answers: Sequence[str | None]) -> list[bool]:
    """Grade answers for one task; datasets with a batch ``grade`` (HumanEval: one
    sandbox call) use it."""
    batch = getattr(dataset, "grade", None)
    if callable(batch):
        return [bool(v) for v in batch(task, list(answers))]
    return [bool(dataset.is_correct(task, a)) for a in answers]


# --- code ----------------------------------------------------------------------------


class CodeGrader:
    """Runs programs against a code task's tests with the ``sandbox`` verifier.

    The verifier (and its containers) is built on first use and kept for the whole
    evaluation; call :meth:`close` at the end."""

    def __init__(self, config: Config, verifier: str = "sandbox") -> None:
        self.config = config
        self.spec = verifier
        self._verifier: Verifier | None = None

    @property
    def verifier(self) -> Verifier:
        if self._verifier is None:
            from reason import get_registry

            self._verifier = get_registry().create("verifier", self.spec, self.config)
        return self._verifier

    def grade(self, task: Task, programs: Sequence[str | None]) -> list[bool]:
        """One verdict per program, from one batched sandbox call. ``None`` (no program)
        fails without running."""
        from reason import ScoreRequest, Step

        indices = [i for i, p in enumerate(programs) if p is not None and str(p).strip()]
        verdicts = [False] * len(programs)
        if not indices:
            return verdicts
        requests = [
            ScoreRequest(task=task, prompt="", steps=(Step(text=_fenced(str(programs[i]))),)) for i in indices
        ]
        scores = self.verifier.score(requests)
        for i, score in zip(indices, scores):
            verdicts[i] = _passed(score)
        return verdicts

    def close(self) -> None:
        if self._verifier is not None:
            self._verifier.close()
            self._verifier = None


def _fenced(program: str) -> str:
    """Give the verifier the program the way a model writes it, so its code extraction
    takes it whole."""
    return program if "```" in program else f"```python\n{program}\n```"


def _passed(score: Any) -> bool:
    if score.passed is not None:
        return bool(score.passed)
    return bool(score.step_scores) and score.last >= 1.0


def extract(text: str, kind: str = "math") -> str | None:
    """The graded part of a completion: the final answer, or the program for code."""
    return answers.extract_code(text) if kind == "code" else answers.extract_answer(text)
