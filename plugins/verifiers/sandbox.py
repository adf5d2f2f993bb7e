"""The functional verifier: run a candidate program against the task's tests in the
Docker sandbox. The verdict is exact: 1.0 when every test passes, 0.0 otherwise, on
every step of the path (a program is only right or wrong as a whole), with the error
output as feedback for the ``on-verifier-fail`` reflection trigger.

Tasks in HumanEval form carry ``prompt``, ``test`` and ``entry_point`` in their
metadata; the program run is ``prompt + code + test + check(entry_point)``. A task with
only ``test`` runs ``code + test``.

Options (``-o key=value``): ``sandbox_timeout`` (seconds per program, 10; also
``--verifier sandbox:5``), ``sandbox_memory`` (MB, 256), ``sandbox_workers`` (programs
run at once, 4), ``sandbox_pool`` (containers started ahead of need, = workers).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from reason import Config, Score, ScoreRequest, Task, Verifier
from reason.answers import extract_code
from reason.errors import UsageError, VerifierError

if TYPE_CHECKING:
    from reason.sandboxes import RunResult, Sandbox

FEEDBACK_CHARS = 2000
"""How much of the error output (its end, where the traceback's last line is) is kept."""
CACHE_SIZE = 2048


def build_program(task: Task, completion: str) -> str:
    """The program that passes exactly when ``completion`` solves ``task``."""
    meta = task.metadata or {}
    test = meta.get("test")
    if not test:
        raise VerifierError(
            f"the sandbox verifier needs a code task with tests (metadata 'test', and for HumanEval form "
            f"'prompt' and 'entry_point'); task {task.id!r} has none: use another --verifier for it"
        )
    code = extract_code(completion)
    entry_point = meta.get("entry_point")
    prompt = meta.get("prompt", "")
    if not entry_point:
        return f"{code}\n\n{test}\n"
    if re.search(rf"^(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        # The completion repeats the whole function. The prompt still goes first: it holds
        # the imports (``from typing import List``) and helpers that models often leave
        # out, and the completion's definition replaces the prompt's docstring-only stub.
        program = f"{prompt}\n\n{code}"
    else:  # the completion is the body that continues the prompt
        program = f"{prompt}{code}"
    return f"{program}\n\n{test}\n\ncheck({entry_point})\n"


def feedback(result: RunResult) -> str:
    """What went wrong, for the model: how the run ended and the end of its error output."""
    detail = (result.stderr or result.stdout).strip()
    if len(detail) > FEEDBACK_CHARS:
        detail = "..." + detail[-FEEDBACK_CHARS:]
    head = f"The program {result.describe()}."
    if result.timed_out:
        head = "The program did not finish within the time limit (an infinite loop, or too slow)."
    return f"{head}\n{detail}" if detail else head


class SandboxVerifier(Verifier):
    """Scores code paths by running them against the task's tests in the sandbox."""

    def __init__(self, config: Config, arg: str | None = None) -> None:
        super().__init__(config, arg)
        if arg:
            try:
                self.timeout_s = float(arg)
            except ValueError:
                raise UsageError(
                    f"--verifier sandbox:{arg}: the timeout must be seconds, e.g. sandbox:10 or -o sandbox_timeout=10"
                ) from None
        else:
            self.timeout_s = config.option("sandbox_timeout", 10.0, float)
        self.memory_mb = config.option("sandbox_memory", 256, int)
        self.workers = config.option("sandbox_workers", 4, int)
        self.pool_size = config.option("sandbox_pool", self.workers, int)
        if self.timeout_s <= 0 or self.workers < 1 or self.pool_size < 0 or self.memory_mb < 16:
            raise UsageError(
                "verifier sandbox: timeout must be > 0, sandbox_workers >= 1, sandbox_pool >= 0, sandbox_memory >= 16"
            )
        self._sandbox: Sandbox | None = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, Score] = OrderedDict()
        self.runs = 0

    @property
    def sandbox(self) -> Sandbox:
        with self._lock:
            if self._sandbox is None:
                from reason.sandboxes import Limits, Sandbox

                self._sandbox = Sandbox(
                    Limits(timeout_s=self.timeout_s, memory_mb=self.memory_mb),
                    pool_size=self.pool_size,
                    max_workers=self.workers,
                ).start()
            return self._sandbox

    def score(self, requests: Sequence[ScoreRequest]) -> list[Score]:
        programs = [build_program(request.task, request.text) for request in requests]
        keys = [hashlib.sha256(program.encode()).hexdigest() for program in programs]
        verdicts: dict[str, Score] = {}
        todo: dict[str, str] = {}
        with self._lock:
            for key, program in zip(keys, programs):
                if key in self._cache:
                    verdicts[key] = self._cache[key]
                else:
                    todo[key] = program
        if todo:
            results = self.sandbox.run_many(list(todo.values()), max_workers=self.workers)
            self.runs += len(results)
            with self._lock:
                for key, result in zip(todo, results):
                    verdict = Score(
                        step_scores=(),
                        passed=result.ok,
                        feedback=None if result.ok else feedback(result),
                    )
                    verdicts[key] = verdict
                    self._cache[key] = verdict
                    while len(self._cache) > CACHE_SIZE:
                        self._cache.popitem(last=False)
        scores = []
        for request, key in zip(requests, keys):
            verdict = verdicts[key]
            value = 1.0 if verdict.passed else 0.0
            scores.append(Score(step_scores=(value,) * len(request.steps), passed=verdict.passed, feedback=verdict.feedback))
        return scores

    def close(self) -> None:
        with self._lock:
            sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None:
            sandbox.close()
