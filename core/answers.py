"""Final answers: extract them from a solution, compare them, vote on them.

Equivalence is math-verify's (a maintained LaTeX/sympy checker), so ``\\frac{1}{2}``,
``0.5`` and ``1/2`` are one answer when voting. math-verify pulls in sympy, so it is
imported on first use, not with ``import reason``.
"""

from __future__ import annotations

import functools
import logging
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


def _as_float(answer: str) -> float | None:
    try:
        return float(_normalize_number(answer).rstrip("%"))
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def is_equivalent(a: str, b: str) -> bool:
    """Whether two answers mean the same thing (numerically or symbolically)."""
    if a is None or b is None:
        return False
    a, b = _clean(str(a)), _clean(str(b))
    if a == b:
        return True
    fa, fb = _as_float(a), _as_float(b)
    if fa is not None and fb is not None:
        # "10%" is both 10 (how GSM8K states percentages) and 0.1 (what it means)
        xs = (fa, fa / 100) if a.endswith("%") else (fa,)
        ys = (fb, fb / 100) if b.endswith("%") else (fb,)
        return any(abs(x - y) <= 1e-6 * max(1.0, abs(y)) for x in xs for y in ys)
    return math_verify_equal(f"${a}$", f"${b}$")


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


def vote(answers: Sequence[str | None], weights: Sequence[float] | None = None) -> tuple[str | None, float]:
    """Group equivalent answers and return the one with the largest total weight
    (weights default to 1: majority vote). Ties go to the answer seen first.
    ``None`` answers do not vote."""
    if weights is None:
        weights = [1.0] * len(answers)
    groups: list[list] = []  # [representative, total]
    for answer, weight in zip(answers, weights):
        if answer is None:
            continue
        for group in groups:
            if is_equivalent(answer, group[0]):
                group[1] += weight
                break
        else:
            groups.append([answer, float(weight)])
    if not groups:
        return None, 0.0
    best = max(groups, key=lambda g: g[1])  # max keeps the first of equal totals
    return best[0], best[1]


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
