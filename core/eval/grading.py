"""Grading: is a model's final answer right for a benchmark problem?

Each dataset grades its own answers (:meth:`reason.Dataset.is_correct`, plugins
registered through ``reason_register_datasets``), built on maintained checkers rather
than string equality and on the one equivalence of :func:`reason.answers.is_equivalent`:

- MATH-500 answers are LaTeX (``\\frac{14}{3}``, ``\\left( 3, \\frac{\\pi}{2} \\right)``):
  compared with math-verify (sympy under the hood), after a cheap numeric check.
- GSM8K (the number after ``#### ``) and MultiArith are numbers: compared as numbers,
  so ``18``, ``18.0``, ``$18`` and ``1,800`` vs ``1800`` grade as they should. A
  percentage answer matches its number (``10%`` vs reference ``10``) and its fraction
  (``10%`` vs ``0.1``); a plain fraction matches a percentage reference only when the
  question asks for a percentage (``percent=asks_for_percent(question)``; GSM8K stores
  "What percentage ...?" answers as ``10``).
- HumanEval programs are run against the problem's hidden tests in the Docker sandbox;
  :class:`CodeGrader` grades by any registered verifier's verdict instead
  (``-o grading_verifier=NAME``).

This module adds what a run needs on top: one batched call per problem
(:func:`grade_many`). The sandbox imports docker on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reason import Config, Dataset, Task, Verifier


def grade_many(dataset: Dataset, task: Task, answers: Sequence[str | None]) -> list[bool]:
    """Grade answers for one task; datasets with a batch ``grade`` (HumanEval: one
    sandbox call) use it."""
    batch = getattr(dataset, "grade", None)
    if callable(batch):
        return [bool(v) for v in batch(task, list(answers))]
    return [bool(dataset.is_correct(task, a)) for a in answers]


# --- code, by a verifier's verdict ---------------------------------------------------------


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
        requests = [ScoreRequest(task=task, prompt="", steps=(Step(text=_fenced(str(programs[i]))),)) for i in indices]
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
