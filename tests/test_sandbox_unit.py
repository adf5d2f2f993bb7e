"""Sandbox logic that needs no Docker engine: program assembly, feedback, output caps,
the attach-stream demultiplexer, owner liveness, options, and lazy imports."""

from __future__ import annotations

import gzip
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

from reason import Config, Task
from reason.errors import UsageError, VerifierError
from reason.plugins.verifiers.sandbox import SandboxVerifier, build_program, feedback
from reason.sandboxes.container import BOOTSTRAP, _Capped, _read_frames
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
        metadata={k: record[k] for k in ("prompt", "test", "entry_point")},
    )


def _namespace(program: str) -> dict:
    namespace: dict = {}
    exec(compile(program, "<program>", "exec"), namespace)  # trusted: the dataset's own solution
    return namespace


def test_program_from_body_completion_runs_the_tests():
    task = humaneval_task(0)
    program = build_program(task, task.reference)
    assert program.startswith(task.metadata["prompt"])
    assert program.rstrip().endswith("check(has_close_elements)")
    _namespace(program)  # the canonical body passes its own tests


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
    _namespace(program)


def test_wrong_program_fails_its_tests():
    task = humaneval_task(0)
    program = build_program(task, "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```")
    with pytest.raises(AssertionError):
        _namespace(program)


def test_task_without_tests_is_a_clear_error():
    with pytest.raises(VerifierError, match="metadata 'test'"):
        build_program(Task(question="What is 2+2?", kind="math"), "4")


def test_task_with_only_tests_runs_code_then_tests():
    task = Task(question="q", kind="code", metadata={"test": "assert f() == 3"})
    program = build_program(task, "```python\ndef f():\n    return 3\n```")
    _namespace(program)


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
    capped = _Capped(1000)
    capped.add(b"A" * 800)
    capped.add(b"B" * 10_000)
    capped.add(b"END")
    assert capped.total == 10_803
    assert capped.truncated
    text = capped.text()
    assert text.startswith("A" * 750)
    assert text.endswith("B" * 247 + "END")
    assert "bytes dropped" in text
    small = _Capped(1000)
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
    out, err = _Capped(1 << 20), _Capped(1 << 20)
    assert _read_frames(ours, out, err, time.monotonic() + 30) is True
    thread.join()
    assert out.text() == "out-1\n" + "out-2\n" * 1000
    assert err.text() == "err-1\n"


def test_attach_stream_reports_the_deadline():
    ours, theirs = socket.socketpair()
    theirs.sendall(_frame(1, b"partial"))
    out, err = _Capped(1024), _Capped(1024)
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
    with pytest.raises(UsageError, match="sandbox_timeout"):
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
