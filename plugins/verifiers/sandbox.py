"""The functional verifier: run a candidate program against the task's *public* tests in
the Docker sandbox.

Public tests are the tests a user has: the examples in the prompt
(:mod:`reason.plugins.public_tests` turns HumanEval's into asserts) or asserts of their
own, in ``task.metadata["public_tests"]`` (a list of assert statements, or one string of
test code). The verifier never reads a benchmark's hidden tests (HumanEval's ``test``):
choosing candidates by the grader's own tests is an oracle, so verified best-of-N would
equal pass@N by construction. ``reason eval`` grades with the hidden tests through
:class:`HiddenTestGrader`, which is not a verifier and cannot be picked by a search.

The verdict on a path, the same on every step (a program is right or wrong as a whole):

- ``passed=True``, score 1.0: every public test passed;
- ``passed=False``, score = the share of public tests passed (0.0 when the program does not
  even load, times out, or exits before its tests ran); ``feedback`` names the failing
  test, what the call returned (or raised) and what was expected, for the
  ``on-verifier-fail`` reflection trigger;
- ``passed=None``, score 0.5: *unverified*, the code task has no public tests, so nothing
  is run. A search then has nothing to tell the candidates apart by: best-of-N (naive)
  keeps the first sample, weighted best-of-N becomes a plain vote, tree searches keep
  their first paths; ``on-verifier-fail`` does not fire. ``reason eval`` counts these
  problems (``unverified`` in its summary).

Tasks in HumanEval form carry ``prompt`` and ``entry_point``: the program is
``prompt + code`` (or the prompt then the completion's own whole function), then the
tests; otherwise the code alone, then the tests. Each test runs on its own, so one
failing example does not hide the others, and floats compare with a 1e-6 tolerance (as
HumanEval's own tests do).

Options (``-o key=value``): ``sandbox_timeout`` (seconds per program, 10; also
``--verifier sandbox:5``), ``sandbox_memory`` (MB, 256), ``sandbox_workers`` (programs
run at once, 4), ``sandbox_pool`` (containers started ahead of need, = workers),
``sandbox_reuse`` (true: warm containers reset between programs; false: a fresh container
per program).
"""

from __future__ import annotations

import ast
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import reason
from reason import Config, Score, ScoreRequest, Task, Verifier
from reason.answers import extract_code
from reason.errors import UsageError, VerifierError
from reason.log import get_logger
from reason.options import Option

if TYPE_CHECKING:
    from reason.sandboxes import RunResult, Sandbox

log = get_logger()

PUBLIC_TESTS = "public_tests"
"""The metadata key of the tests a verifier may run."""
HIDDEN_TEST = "test"
"""The metadata key of a benchmark's hidden tests: for grading only, never read by the verifier."""
UNVERIFIED_SCORE = 0.5
"""The score of a candidate that could not be checked (no public tests): neither right nor wrong."""
FEEDBACK_CHARS = 2000
"""How much of the error output (its end, where the traceback's last line is) is kept."""
FAILURES_SHOWN = 3
"""How many failing public tests the feedback spells out."""
CACHE_SIZE = 2048


def public_tests_of(task: Task) -> list[str]:
    """The public tests a task carries, as a list of test sources (possibly empty)."""
    tests = (task.metadata or {}).get(PUBLIC_TESTS)
    if not tests:
        return []
    if isinstance(tests, str):
        return [tests]
    return [str(t) for t in tests if str(t).strip()]


def candidate_program(task: Task, completion: str) -> str:
    """The program a completion stands for, before any test: the prompt's imports and
    helpers, then the code (a body that continues the prompt, or a whole function)."""
    meta = task.metadata or {}
    code = extract_code(completion)
    entry_point = meta.get("entry_point")
    prompt = meta.get("prompt", "")
    if not entry_point:
        return code
    if re.search(rf"^(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        # The completion repeats the whole function. The prompt still goes first: it holds
        # the imports (``from typing import List``) and helpers that models often leave
        # out, and the completion's definition replaces the prompt's docstring-only stub.
        return f"{prompt}\n\n{code}"
    return f"{prompt}{code}"  # the completion is the body that continues the prompt


# Runs inside the sandbox, after the candidate's code, in the same module namespace.
_HARNESS = r"""

def _reason_public_tests(tests, marker):
    import ast, math, sys

    def same(got, want):
        numbers = (int, float)
        if (isinstance(got, float) or isinstance(want, float)) and isinstance(got, numbers) and isinstance(want, numbers) \
                and not isinstance(got, bool) and not isinstance(want, bool):
            return math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-6)
        if isinstance(want, (list, tuple)) and type(got) is type(want):
            return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want))
        if isinstance(want, dict) and isinstance(got, dict):
            return got.keys() == want.keys() and all(same(got[k], want[k]) for k in want)
        return got == want

    def short(value, limit=300):
        text = repr(value)
        return text if len(text) <= limit else text[:limit] + "..."

    def where(exc):
        tb, last = exc.__traceback__, None
        while tb is not None:
            code = tb.tb_frame.f_code
            if code.co_filename != "<public test>" and not code.co_name.startswith("_reason_"):
                last = tb
            tb = tb.tb_next
        if last is None:
            return ""
        try:
            import linecache
            line = linecache.getline(last.tb_frame.f_code.co_filename, last.tb_lineno).strip()
        except Exception:
            line = ""
        name = last.tb_frame.f_code.co_name
        return f" (in {name}: {line})" if line else f" (in {name})"

    env = globals()
    passed, failures = 0, []
    for source in tests:
        try:
            tree = ast.parse(source, "<public test>", "exec")
            node = tree.body[0] if len(tree.body) == 1 else None
            if isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1 \
                    and isinstance(node.test.ops[0], ast.Eq):
                call = ast.get_source_segment(source, node.test.left) or "the call"
                got = eval(compile(ast.Expression(node.test.left), "<public test>", "eval"), env)
                want = eval(compile(ast.Expression(node.test.comparators[0]), "<public test>", "eval"), env)
                if not same(got, want):
                    failures.append((source, f"AssertionError: {call} returned {short(got)}, expected {short(want)}"))
                    continue
            else:
                exec(compile(tree, "<public test>", "exec"), env)
            passed += 1
        except BaseException as exc:  # SystemExit too: a candidate that exits fails its test
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            failures.append((source, (message[:500] + where(exc))))
    sys.stdout.flush()
    sys.stderr.flush()
    report = {"passed": passed, "total": len(tests), "failures": failures[:%(shown)d]}
    print("\n" + marker + " " + repr(report), flush=True)
    raise SystemExit(0 if passed == len(tests) else 1)


_reason_public_tests(%(tests)s, %(marker)r)
"""


def build_program(task: Task, completion: str) -> str:
    """The program that runs ``completion`` against ``task``'s public tests, each on its
    own, and prints a report line (tagged with a marker derived from the program) that
    :func:`read_report` reads back."""
    tests = public_tests_of(task)
    if not tests:
        raise VerifierError(f"task {task.id!r} has no public tests (metadata {PUBLIC_TESTS!r})")
    program = candidate_program(task, completion)
    marker = _marker(program, tests)
    return program + _HARNESS % {"tests": repr(tests), "marker": marker, "shown": FAILURES_SHOWN}


def build_graded_program(task: Task, completion: str) -> str:
    """The program that passes exactly when ``completion`` passes the benchmark's hidden
    tests (HumanEval's ``test`` and ``check(entry_point)``). For grading only."""
    meta = task.metadata or {}
    test = meta.get(HIDDEN_TEST)
    if not test:
        raise VerifierError(
            f"grading a code task needs its tests (metadata {HIDDEN_TEST!r}, and for HumanEval form "
            f"'prompt' and 'entry_point'); task {task.id!r} has none"
        )
    program = candidate_program(task, completion)
    entry_point = meta.get("entry_point")
    if not entry_point:
        return f"{program}\n\n{test}\n"
    return f"{program}\n\n{test}\n\ncheck({entry_point})\n"


def _marker(program: str, tests: Sequence[str]) -> str:
    """A line tag no candidate prints by accident: derived from the program and tests."""
    digest = hashlib.sha256(("\0".join([program, *tests])).encode()).hexdigest()[:16]
    return f"__reason_public_tests_{digest}__"


def read_report(program: str, stdout: str) -> dict | None:
    """The harness's report in a run's output, or ``None`` when the tests never reported
    (the program did not load, timed out, or exited first). Parsed as a literal, never run."""
    marker = re.search(r"'(__reason_public_tests_[0-9a-f]{16}__)'\)\s*$", program)
    if marker is None:
        return None
    tag = marker.group(1) + " "
    for line in reversed(stdout.splitlines()):
        if line.startswith(tag):
            try:
                report = ast.literal_eval(line[len(tag) :])
            except (SyntaxError, ValueError, MemoryError, RecursionError):
                return None
            if isinstance(report, dict) and isinstance(report.get("passed"), int) and isinstance(report.get("total"), int):
                return report
            return None
    return None


def feedback(result: RunResult) -> str:
    """What went wrong, for the model: how the run ended and the end of its error output."""
    detail = (result.stderr or result.stdout).strip()
    if len(detail) > FEEDBACK_CHARS:
        detail = "..." + detail[-FEEDBACK_CHARS:]
    head = f"The program {result.describe()}."
    if result.timed_out:
        head = "The program did not finish within the time limit (an infinite loop, or too slow)."
    return f"{head}\n{detail}" if detail else head


def tests_feedback(report: dict) -> str:
    """The failing public tests, for the model: each test, then what happened."""
    failed = report["total"] - report["passed"]
    shown = [f for f in report.get("failures") or [] if isinstance(f, (list, tuple)) and len(f) == 2]
    lines = [f"{failed} of {report['total']} public test{'s' if report['total'] != 1 else ''} failed."]
    for source, message in shown:
        lines.append(f"Failed: {source}\n{message}")
    if failed > len(shown):
        lines.append(f"({failed - len(shown)} more failed.)")
    return "\n".join(lines)


def verdict(program: str, result: RunResult) -> Score:
    """A run of :func:`build_program`'s program as a one-step verdict."""
    report = read_report(program, result.stdout)
    if report is None:
        text = feedback(result)
        if result.ok:  # exit 0 without a report: the code ended the program first
            text = "The program exited before its public tests ran (does the code call exit() or run a main block?).\n" + text
        return Score(step_scores=(0.0,), passed=False, feedback=text)
    total = max(report["total"], 1)
    share = min(max(report["passed"], 0), total) / total
    if report["passed"] == report["total"] and result.ok:
        return Score(step_scores=(1.0,), passed=True)
    text = tests_feedback(report) if report["passed"] < report["total"] else feedback(result)
    return Score(step_scores=(share if share < 1.0 else 0.0,), passed=False, feedback=text)


class SandboxOptions(reason.Options):
    """The sandbox's options: the verifier's, and the hidden-test grader's in ``reason eval``."""

    prefix = "sandbox_"
    timeout = Option(float, 10.0, minimum=0.001, help="seconds a program may run (or sandbox:SECONDS)")
    memory = Option(int, 256, minimum=16, help="memory limit in MB")
    workers = Option(int, 4, minimum=1, help="programs run at once")
    pool = Option(int, None, minimum=0, help="warm containers kept ready [workers]")
    reuse = Option(
        bool,
        True,
        help="run programs one after another in warm containers reset between runs (~15 ms a run); "
        "false: a fresh container per program (~180 ms)",
    )


class _SandboxUser:
    """Owns a sandbox (started on first use) and a cache of runs by program text."""

    def _setup(self, options: SandboxOptions, timeout_s: float | None = None) -> None:
        self.timeout_s = options.timeout if timeout_s is None else timeout_s
        self.memory_mb = options.memory
        self.workers = options.workers
        self.pool_size = self.workers if options.pool is None else options.pool
        self.reuse = options.reuse
        if self.timeout_s <= 0:
            raise UsageError(f"verifier sandbox: the timeout must be > 0 seconds, got {self.timeout_s}")
        self._sandbox: Sandbox | None = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, RunResult] = OrderedDict()
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
                    reuse=self.reuse,
                ).start()
            return self._sandbox

    def run_programs(self, programs: Sequence[str]) -> list[RunResult]:
        """Run each distinct program once (cached by its text), in parallel."""
        keys = [hashlib.sha256(program.encode()).hexdigest() for program in programs]
        done: dict[str, RunResult] = {}
        todo: dict[str, str] = {}
        with self._lock:
            for key, program in zip(keys, programs):
                if key in self._cache:
                    done[key] = self._cache[key]
                else:
                    todo[key] = program
        if todo:
            results = self.sandbox.run_many(list(todo.values()), max_workers=self.workers)
            self.runs += len(results)
            with self._lock:
                for key, result in zip(todo, results):
                    done[key] = result
                    self._cache[key] = result
                    while len(self._cache) > CACHE_SIZE:
                        self._cache.popitem(last=False)
        return [done[key] for key in keys]

    def close(self) -> None:
        with self._lock:
            sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None:
            sandbox.close()


class SandboxVerifier(_SandboxUser, Verifier):
    """Scores code paths by running them against the task's public tests in the sandbox."""

    Options = SandboxOptions
    options: SandboxOptions

    def __init__(self, config: Config, arg: str | None = None, **kwargs: Any) -> None:
        Verifier.__init__(self, config, arg, **kwargs)
        timeout_s = None
        if arg:
            try:
                timeout_s = float(arg)
            except ValueError:
                raise UsageError(
                    f"--verifier sandbox:{arg}: the timeout must be seconds, e.g. sandbox:10 or -o sandbox.timeout=10"
                ) from None
        self._setup(self.options, timeout_s)
        self.unverified_tasks: set[str] = set()

    def _check(self, task: Task) -> list[str]:
        tests = public_tests_of(task)
        if tests:
            return tests
        if task.kind != "code":
            raise VerifierError(
                f"the sandbox verifier needs a code task with tests (metadata {PUBLIC_TESTS!r}: asserts a user "
                f"would have); task {task.id!r} is a {task.kind} task: use another --verifier for it"
            )
        if task.id not in self.unverified_tasks:
            self.unverified_tasks.add(task.id)
            hidden = " (its hidden 'test' is for grading and is never run here)" if (task.metadata or {}).get(HIDDEN_TEST) else ""
            log.info("sandbox verifier: no public tests, candidates unverified", task=task.id, note=hidden.strip(" ()") or None)
        return []

    def score(self, requests: Sequence[ScoreRequest]) -> list[Score]:
        programs: dict[int, str] = {}
        for i, request in enumerate(requests):
            if self._check(request.task):
                programs[i] = build_program(request.task, request.text)
        results = dict(zip(programs, self.run_programs(list(programs.values()))))
        scores = []
        for i, request in enumerate(requests):
            steps = len(request.steps)
            if i not in programs:
                scores.append(Score(step_scores=(UNVERIFIED_SCORE,) * steps, passed=None))
                continue
            one = verdict(programs[i], results[i])
            scores.append(Score(step_scores=one.step_scores * steps, passed=one.passed, feedback=one.feedback))
        return scores


class HiddenTestGrader(_SandboxUser):
    """Grades programs with a benchmark's hidden tests (HumanEval's ``test``), for
    ``reason eval``. Not a verifier: it is never registered, so no search can choose by
    the grader's tests. Same sandbox options as the verifier."""

    def __init__(self, config: Config, options: SandboxOptions | None = None) -> None:
        self.config = config
        self._setup(options or SandboxOptions.from_run(config.options))

    def grade(self, task: Task, programs: Sequence[str | None]) -> list[bool]:
        """One verdict per program (``None`` or empty fails without running)."""
        indices = [i for i, p in enumerate(programs) if p is not None and str(p).strip()]
        verdicts = [False] * len(programs)
        built = [build_graded_program(task, _fenced(str(programs[i]))) for i in indices]
        for i, result in zip(indices, self.run_programs(built)):
            verdicts[i] = result.ok
        return verdicts


def _fenced(program: str) -> str:
    """The program the way a model writes it, so code extraction takes it whole."""
    return program if "```" in program else f"```python\n{program}\n```"
