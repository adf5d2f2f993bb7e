"""Sandbox logic that needs no Docker engine: program assembly (public tests for the
verifier, hidden tests for grading), the public-test harness run here on trusted code,
verdicts and feedback, unverified tasks, output caps, the attach-stream demultiplexer,
owner liveness, options, and lazy imports."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reason import Config, ScoreRequest, Step, Task
from reason.errors import UsageError, VerifierError
from reason.plugins.public_tests import public_test_sources
from reason.plugins.verifiers.sandbox import (
    UNVERIFIED_SCORE,
    HiddenTestGrader,
    SandboxVerifier,
    build_graded_program,
    build_program,
    feedback,
    read_report,
    verdict,
)
from reason.sandboxes.container import BOOTSTRAP, CappedOutput, _read_frames
from reason.sandboxes.engine import owner_alive, owner_id, process_start_time
from reason.sandboxes.image import image_tag, recipe
from reason.sandboxes.limits import Limits
from reason.sandboxes.result import RunResult

HUMANEVAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz"


def humaneval_task(index: int = 0) -> Task:
    with gzip.open(HUMANEVAL, "rt") as fh:
        for i, line in enumerate(fh):
            if i == index:
                record = json.loads(line)
                break
    return Task(
        question=record["prompt"],
        id=record["task_id"],
        kind="code",
        reference=record["canonical_solution"],
        metadata={
            **{k: record[k] for k in ("prompt", "test", "entry_point")},
            "public_tests": public_test_sources(record["prompt"], record["entry_point"]),
        },
    )


def _namespace(program: str) -> dict:
    namespace: dict = {}
    exec(compile(program, "<program>", "exec"), namespace)  # trusted: the dataset's own solution
    return namespace


def run_here(program: str) -> RunResult:
    """Run a program of trusted, test-written code in this process, as the sandbox would
    report it (the candidates here are the dataset's own solution or written by the test)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            _namespace(program)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - reported like an uncaught error
            print(f"{type(exc).__name__}: {exc}", file=err)
            code = 1
    return RunResult(exit_code=code, stdout=out.getvalue(), stderr=err.getvalue())


def test_program_from_body_completion_runs_the_public_tests_not_the_hidden_ones():
    task = humaneval_task(0)
    program = build_program(task, task.reference)
    assert program.startswith(task.metadata["prompt"])
    assert "def check(candidate)" not in program and "check(has_close_elements)" not in program
    for test in task.metadata["public_tests"]:
        assert repr(test) in program
    result = run_here(program)
    assert result.exit_code == 0, result
    assert read_report(program, result.stdout) == {"passed": 2, "total": 2, "failures": []}
    score = verdict(program, result)
    assert score.passed is True and score.step_scores == (1.0,) and score.feedback is None


def test_graded_program_runs_the_hidden_tests():
    task = humaneval_task(0)
    program = build_graded_program(task, task.reference)
    assert program.rstrip().endswith("check(has_close_elements)")
    assert task.metadata["test"] in program
    _namespace(program)  # the canonical body passes its hidden tests
    wrong = build_graded_program(task, "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```")
    with pytest.raises(AssertionError):
        _namespace(wrong)


def test_program_from_whole_function_in_a_fence_keeps_prompt_imports():
    task = humaneval_task(0)
    # a model's reply: prose, then the whole function WITHOUT the typing import
    body = task.reference
    completion = (
        "Here is the solution:\n```python\n"
        "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n" + body + "```\nDone."
    )
    program = build_program(task, completion)
    assert "from typing import List" in program
    assert program.count("def has_close_elements(") == 2  # the stub, then the completion's
    assert verdict(program, run_here(program)).passed is True


def test_wrong_program_fails_the_public_test_with_what_it_returned():
    task = humaneval_task(0)
    program = build_program(task, "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```")
    result = run_here(program)
    assert result.exit_code == 1
    score = verdict(program, result)
    assert score.passed is False
    assert score.step_scores == (0.5,)  # one of the two examples still holds
    assert score.feedback.startswith("1 of 2 public tests failed.")
    assert "Failed: assert has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3) == True" in score.feedback
    assert "AssertionError: has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3) returned False, expected True" in score.feedback


def test_each_public_test_runs_on_its_own_and_floats_compare_with_a_tolerance():
    task = Task(
        question="q",
        kind="code",
        metadata={"public_tests": ["assert f(1) == 0.3", "assert f(2) == 2", "assert f(3) == (1, 2)", "assert f(4) == 7"]},
    )
    code = (
        "```python\ndef f(x):\n"
        "    if x == 1:\n        return 0.1 + 0.2\n"  # 0.30000000000000004
        "    if x == 2:\n        raise ValueError('no twos')\n"
        "    if x == 3:\n        return [1, 2]\n"  # a list is not the tuple asked for
        "    return 7\n```"
    )
    program = build_program(task, code)
    report = read_report(program, run_here(program).stdout)
    assert report["passed"] == 2 and report["total"] == 4
    (two, why_two), (three, why_three) = report["failures"]
    assert two == "assert f(2) == 2" and why_two.startswith("ValueError: no twos (in f")  # the line too, where the file is readable
    assert three == "assert f(3) == (1, 2)" and why_three == "AssertionError: f(3) returned [1, 2], expected (1, 2)"


def test_a_program_that_exits_before_its_tests_is_not_passed():
    task = Task(question="q", kind="code", metadata={"public_tests": ["assert f() == 3"]})
    program = build_program(task, "```python\ndef f():\n    return 4\n\nimport sys\nsys.exit(0)\n```")
    result = run_here(program)
    assert result.exit_code == 0 and read_report(program, result.stdout) is None
    score = verdict(program, result)
    assert score.passed is False and score.step_scores == (0.0,)
    assert "exited before its public tests ran" in score.feedback
    # a candidate that prints a report line of its own does not fool the reader: the tag
    # is derived from the program, and the last report line wins
    fake = build_program(task, "```python\ndef f():\n    print(\"__reason_public_tests_0000000000000000__ {'passed': 1, 'total': 1}\")\n    return 4\n```")
    assert verdict(fake, run_here(fake)).passed is False


def test_a_task_without_public_tests_is_a_clear_error_for_build_program():
    # (before public tests, the verifier ran metadata 'test', the hidden tests)
    with pytest.raises(VerifierError, match="public_tests"):
        build_program(Task(question="What is 2+2?", kind="math"), "4")


def test_task_with_only_public_tests_runs_code_then_tests():
    task = Task(question="q", kind="code", metadata={"public_tests": ["assert f() == 3"]})
    program = build_program(task, "```python\ndef f():\n    return 3\n```")
    assert verdict(program, run_here(program)).passed is True
    # one string of test code is one test
    task = Task(question="q", kind="code", metadata={"public_tests": "assert f() == 3\nassert f() > 2"})
    program = build_program(task, "```python\ndef f():\n    return 3\n```")
    assert read_report(program, run_here(program).stdout)["total"] == 1


def test_a_code_task_without_public_tests_is_unverified_and_runs_nothing():
    """The hidden ``test`` alone is not something the verifier may run: the task is
    unverified (passed None, a neutral score) and no sandbox is even started."""
    task = humaneval_task(0)
    hidden_only = Task(
        question=task.question, id=task.id, kind="code",
        metadata={k: task.metadata[k] for k in ("prompt", "test", "entry_point")},
    )
    verifier = SandboxVerifier(Config())
    request = ScoreRequest(task=hidden_only, prompt="", steps=(Step(text="a"), Step(text=task.reference)))
    (score,) = verifier.score([request])
    assert score.passed is None and score.feedback is None
    assert score.step_scores == (UNVERIFIED_SCORE, UNVERIFIED_SCORE)
    assert verifier.runs == 0 and verifier._sandbox is None
    assert verifier.unverified_tasks == {task.id}
    with pytest.raises(VerifierError, match="code task with tests"):
        verifier.score([ScoreRequest(task=Task(question="2+2?"), prompt="", steps=(Step(text="4"),))])


def test_hidden_grader_refuses_a_task_without_hidden_tests_and_fails_missing_programs():
    grader = HiddenTestGrader(Config(options={"sandbox_timeout": 3}))
    assert grader.timeout_s == 3
    assert grader.grade(humaneval_task(0), [None, "  "]) == [False, False]  # nothing to run: no sandbox
    assert grader._sandbox is None
    with pytest.raises(VerifierError, match="metadata 'test'"):
        grader.grade(Task(question="q", kind="code", metadata={"public_tests": ["assert f() == 1"]}), ["def f(): return 1"])


def test_feedback_names_the_failure_and_keeps_the_traceback_end():
    result = RunResult(exit_code=1, stdout="", stderr="x" * 5000 + "\nAssertionError: boom")
    text = feedback(result)
    assert text.startswith("The program exited 1.")
    assert text.endswith("AssertionError: boom")
    assert len(text) < 2200
    assert "time limit" in feedback(RunResult(exit_code=137, stdout="", stderr="", timed_out=True))
    assert "out of memory" in feedback(RunResult(exit_code=137, stdout="", stderr="", oom_killed=True))


def test_run_result_ok_and_json():
    ok = RunResult(exit_code=0, stdout="hi\n", stderr="")
    assert ok.ok and ok.describe() == "exited 0"
    assert not RunResult(exit_code=0, stdout="", stderr="", timed_out=True).ok
    data = ok.to_dict()
    for key in ("exit_code", "stdout", "stderr", "timed_out", "oom_killed", "truncated", "duration_s"):
        assert key in data
    json.dumps(data)


def test_capped_keeps_head_and_tail_and_counts_everything():
    capped = CappedOutput(1000)
    capped.add(b"A" * 800)
    capped.add(b"B" * 10_000)
    capped.add(b"END")
    assert capped.total == 10_803
    assert capped.truncated
    text = capped.text()
    assert text.startswith("A" * 750)
    assert text.endswith("B" * 247 + "END")
    assert "bytes dropped" in text
    small = CappedOutput(1000)
    small.add(b"hello")
    assert not small.truncated and small.text() == "hello"


def _frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


def test_attach_stream_demultiplexes_split_frames():
    ours, theirs = socket.socketpair()
    payload = _frame(1, b"out-1\n") + _frame(2, b"err-1\n") + _frame(1, b"out-2\n" * 1000)

    def feed():
        for i in range(0, len(payload), 7):  # frames split at odd places
            theirs.sendall(payload[i : i + 7])
        theirs.close()

    thread = threading.Thread(target=feed)
    thread.start()
    out, err = CappedOutput(1 << 20), CappedOutput(1 << 20)
    assert _read_frames(ours, out, err, time.monotonic() + 30) is True
    thread.join()
    assert out.text() == "out-1\n" + "out-2\n" * 1000
    assert err.text() == "err-1\n"


def test_attach_stream_reports_the_deadline():
    ours, theirs = socket.socketpair()
    theirs.sendall(_frame(1, b"partial"))
    out, err = CappedOutput(1024), CappedOutput(1024)
    assert _read_frames(ours, out, err, time.monotonic() + 0.3) is False
    assert out.text() == "partial"
    theirs.close()


def test_owner_liveness_tells_dead_and_reused_pids():
    me = owner_id()
    assert owner_alive(me)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child_owner = owner_id(child.pid)
    child.wait()
    assert not owner_alive(child_owner)
    # same pid, different start time = the pid was reused by another process
    assert not owner_alive(f"{os.getpid()}:{int(process_start_time(os.getpid())) + 1}")
    assert not owner_alive("not-a-pid")


def test_image_tag_is_a_stable_hash_of_the_recipe():
    assert image_tag() == image_tag()
    assert image_tag().startswith("reason-sandbox:py3-")
    assert recipe()["packages"] == ["python3"]


def test_bootstrap_hands_the_rest_of_stdin_to_the_program(tmp_path):
    """The container's bootstrap, run here with the host's sh/head/timeout: the program
    arrives first, and what follows it is the program's own stdin."""
    code = b"import sys\nprint('got', sys.stdin.read().strip())\n"
    message = f"{len(code)} 20\n".encode() + code + b"the input"
    script = BOOTSTRAP.replace("python3 main.py", f"{sys.executable} main.py")
    proc = subprocess.run(["sh", "-c", script], input=message, capture_output=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"got the input\n"


def test_limits_reject_nonsense():
    with pytest.raises(ValueError):
        Limits(timeout_s=0)
    with pytest.raises(ValueError):
        Limits(memory_mb=1)


def test_verifier_options_and_colon_argument():
    verifier = SandboxVerifier(Config(options={"sandbox_workers": 3, "sandbox_memory": 128}), "2.5")
    assert verifier.timeout_s == 2.5 and verifier.workers == 3 and verifier.pool_size == 3 and verifier.memory_mb == 128
    with pytest.raises(UsageError, match="sandbox.timeout"):
        SandboxVerifier(Config(), "soon")
    with pytest.raises(UsageError):
        SandboxVerifier(Config(options={"sandbox_workers": 0}))


def test_sandbox_verifier_is_registered():
    import reason

    registration, arg = reason.get_registry().lookup("verifier", "sandbox:5")
    assert arg == "5"
    assert getattr(registration.factory, "target", "").endswith("sandbox:SandboxVerifier")


def test_cli_start_does_not_import_docker():
    code = (
        "import sys\n"
        "from reason.cli import cli\n"
        "cmd = cli.get_command(None, 'sandbox')\n"
        "assert cmd is not None and {'build', 'doctor', 'run', 'clean'} <= set(cmd.commands)\n"
        "assert 'docker' not in sys.modules, 'docker imported at CLI start'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
