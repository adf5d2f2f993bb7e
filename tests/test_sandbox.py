"""The Docker sandbox on a real engine: the CLI, the warm pool's isolation, cleanup after a
runner is SIGKILLed, the ``sandbox`` verifier on HumanEval's public tests (alone, inside
the runtime, with reflection, and with the embedded model), and that it never runs the
hidden tests, which only the grader does."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reason import Config, Runtime, ScoreRequest, Step, Task
from reason.plugins.public_tests import public_test_sources
from reason.sandboxes import Limits, Sandbox
from reason.sandboxes.engine import LABEL, LABEL_OWNER, EngineUnavailable, connect, owner_id
from reason.sandboxes.sweep import sweep

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[1]
HUMANEVAL = REPO.parent / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz"
REASON = [sys.executable, "-c", "from reason.cli import main; main()"]


@pytest.fixture(scope="module")
def client():
    try:
        client = connect()
    except EngineUnavailable as exc:
        pytest.skip(str(exc))
    from reason.sandboxes.image import build

    build(client)  # idempotent: `make test` has built it already
    yield client
    client.close()


def containers_of(client, owner: str) -> list[dict]:
    return [
        c
        for c in client.api.containers(all=True, filters={"label": LABEL})
        if (c.get("Labels") or {}).get(LABEL_OWNER) == owner
    ]


def humaneval(index: int) -> Task:
    with gzip.open(HUMANEVAL, "rt") as fh:
        record = [json.loads(line) for line in fh][index]
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


def reason_cli(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*REASON, *args], capture_output=True, input=input, timeout=300, cwd=REPO)


# --- CLI -----------------------------------------------------------------------------


def test_cli_doctor_build_run_clean(client, tmp_path):
    doctor = reason_cli("sandbox", "doctor", "--json")
    assert doctor.returncode == 0, doctor.stderr
    report = json.loads(doctor.stdout)
    assert report["ready"] and report["image_exists"] and report["engine"].startswith("Docker")

    build = reason_cli("sandbox", "build")
    assert build.returncode == 0 and b"already exists" in build.stdout

    program = tmp_path / "prog.py"
    program.write_text("import sys\ndata = sys.stdin.read()\nprint(data.upper(), end='')\nsys.exit(3)\n")
    stdin = tmp_path / "in.txt"
    stdin.write_text("hello sandbox")
    run = reason_cli("sandbox", "run", str(program), "--stdin", str(stdin))
    assert run.returncode == 3 and run.stdout == b"HELLO SANDBOX"
    assert b"exited 3" in run.stderr

    as_json = reason_cli("sandbox", "run", "--json", "--timeout", "1.5", "--memory", "64", str(program))
    assert as_json.returncode == 0
    result = json.loads(as_json.stdout)
    assert {"exit_code", "stdout", "stderr", "timed_out", "oom_killed", "truncated", "duration_s"} <= set(result)
    assert result["exit_code"] == 3 and result["stdout"] == "" and not result["timed_out"]

    spin = tmp_path / "spin.py"
    spin.write_text("while True:\n    pass\n")
    timed = reason_cli("sandbox", "run", "--timeout", "1", str(spin))
    assert timed.returncode == 124 and b"timed out" in timed.stderr

    bad = reason_cli("sandbox", "run", "--memory", "1", str(program))
    assert bad.returncode == 2 and b"--memory" in bad.stderr


def test_cli_clean_removes_leftovers(client):
    from reason.sandboxes.container import container_spec, create_started, remove
    from reason.sandboxes.image import image_tag

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_owner = owner_id(dead.pid)
    dead.wait()
    spec = container_spec(client, image_tag(), Limits())
    spec["labels"][LABEL_OWNER] = dead_owner  # what a crashed runner leaves behind
    orphan = client.api.create_container(**spec)["Id"]
    mine = create_started(client, image_tag(), Limits())  # a live owner's (this process)
    try:
        orphans = reason_cli("sandbox", "clean")
        assert orphans.returncode == 0 and b"removed" in orphans.stdout
        ids = [c["Id"] for c in client.api.containers(all=True)]
        assert orphan not in ids and mine in ids

        # `clean --all` removes every labelled container, whoever owns it; run it only when
        # no other process on this engine (another session's evaluation) has any.
        foreign = [c for c in client.api.containers(all=True, filters={"label": LABEL}) if c["Id"] != mine]
        if not foreign:
            everything = reason_cli("sandbox", "clean", "--all")
            assert everything.returncode == 0 and b"removed 1 container" in everything.stdout
            assert mine not in [c["Id"] for c in client.api.containers(all=True)]
    finally:
        remove(client, mine)
        remove(client, orphan)


def test_doctor_says_what_to_run_without_an_engine():
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    proc = subprocess.run([*REASON, "sandbox", "doctor"], capture_output=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert b"NOT REACHABLE" in proc.stdout and b"ensure-docker.sh" in proc.stdout


# --- the warm pool ---------------------------------------------------------------------


def test_pool_runs_leak_nothing_into_the_next_run(client):
    """Run 1 leaves files, a daemonised process, shared memory and an environment change;
    run 2 (from the pool) sees none of it."""
    with Sandbox(Limits(timeout_s=10), pool_size=1, client=client) as sandbox:
        assert sandbox.pool.wait_ready(60)
        first = sandbox.run(
            textwrap.dedent(
                """
                import os, subprocess
                for path in ['/sandbox/leak', '/tmp/leak', '/dev/shm/leak', '/sandbox/.profile']:
                    with open(path, 'w') as f:
                        f.write('secret')
                os.environ['LEAK'] = 'yes'
                os.putenv('LEAK', 'yes')
                subprocess.Popen(['sleep', '1000'], start_new_session=True)
                if os.fork() == 0:  # a daemon that would outlive the program
                    os.setsid()
                    import time; time.sleep(1000)
                print('planted', len([p for p in os.listdir('/proc') if p.isdigit()]))
                """
            )
        )
        assert first.ok and first.stdout.startswith("planted"), first
        assert int(first.stdout.split()[1]) >= 4  # the planted processes were really running
        assert sandbox.pool.wait_ready(60)
        hits = sandbox.pool.hits
        second = sandbox.run(
            textwrap.dedent(
                """
                import json, os
                files = [p for p in ['/sandbox/leak', '/tmp/leak', '/dev/shm/leak', '/sandbox/.profile'] if os.path.exists(p)]
                procs = [open(f'/proc/{p}/cmdline').read().replace(chr(0), ' ').strip()
                         for p in os.listdir('/proc') if p.isdigit()]
                print(json.dumps({'files': files, 'procs': procs, 'env': os.environ.get('LEAK'),
                                  'workdir': sorted(os.listdir('/sandbox'))}))
                """
            )
        )
        assert sandbox.pool.hits == hits + 1  # it really came from the pool
        probe = json.loads(second.stdout)
        assert probe["files"] == [] and probe["env"] is None
        assert probe["workdir"] == ["main.py"]
        assert not any("sleep" in p for p in probe["procs"]), probe["procs"]
        assert len(probe["procs"]) == 2, probe["procs"]  # timeout (pid 1) and this python
    assert containers_of(client, owner_id()) == []


PLANT = """
import ctypes, os, signal, subprocess, sys
os.makedirs('/sandbox/.local/lib/python%d.%d/site-packages' % sys.version_info[:2])
with open('/sandbox/.local/lib/python%d.%d/site-packages/usercustomize.py' % sys.version_info[:2], 'w') as f:
    f.write('print("HIJACKED")')  # the user site dir: imported by every later python, if left
for path in ['/sandbox/json.py', '/tmp/json.py', '/dev/shm/leak']:  # json.py shadows the stdlib's
    with open(path, 'w') as f:
        f.write('raise SystemExit("HIJACKED")')
os.makedirs('/sandbox/locked/deeper')
os.chmod('/sandbox/locked', 0)
libc = ctypes.CDLL(None)
assert libc.shmget(0, 4096, 0o1000 | 0o666) >= 0 and libc.msgget(0, 0o1000 | 0o666) >= 0  # IPC_PRIVATE | IPC_CREAT
if os.fork() == 0:  # a daemon that waits to write into the next program's files
    os.setsid()
    import time
    while True:
        try:
            with open('/sandbox/main.py', 'a') as f:
                f.write('\\nprint("HIJACKED")\\n')
        except OSError:
            pass
        time.sleep(0.001)
subprocess.Popen(['sleep', '1000'], start_new_session=True)
results = {}
for name in ['SIGSTOP', 'SIGKILL', 'SIGTERM', 'SIGINT', 'SIGHUP']:  # the supervisor is pid 1
    try:
        os.kill(1, getattr(signal, name))
        results[name] = 'sent'
    except OSError as exc:
        results[name] = type(exc).__name__
for path in ['/proc/1/mem', '/proc/1/fd/0', '/proc/1/fd/1', '/proc/1/environ']:
    try:
        open(path, 'rb').read(1)
        results[path] = 'opened'
    except OSError as exc:
        results[path] = type(exc).__name__
print(results)
"""

PROBE = """
import json, os
files = [os.path.join(d, f) for d in ['/sandbox', '/tmp', '/dev/shm'] for f in os.listdir(d)]
procs = [open(f'/proc/{p}/cmdline').read().replace(chr(0), ' ').strip() for p in os.listdir('/proc') if p.isdigit()]
ipc = {k: open(f'/proc/sysvipc/{k}').read().splitlines()[1:] for k in ['shm', 'msg', 'sem']}
print(json.dumps({'files': sorted(files), 'procs': procs, 'ipc': ipc}))
"""


def test_a_reused_container_keeps_nothing_of_the_last_program(client):
    """What a hostile program leaves in a container the supervisor reuses (files that would
    hijack the next program's imports, a locked directory, a daemon writing into the next
    program's file, System V IPC, signals sent to pid 1, its memory and streams through
    /proc) reaches none of the programs after it, which run in that same container."""
    with Sandbox(Limits(timeout_s=10), pool_size=0, max_workers=1, reuse=True, client=client) as sandbox:
        planted = sandbox.run(PLANT)
        assert planted.ok, planted
        (container,) = containers_of(client, owner_id())
        for path in ["/proc/1/mem", "/proc/1/fd/0", "/proc/1/fd/1", "/proc/1/environ"]:
            assert f"'{path}': 'PermissionError'" in planted.stdout, planted.stdout
        for _ in range(3):
            probe = sandbox.run(PROBE)
            assert probe.ok and "HIJACKED" not in probe.stdout + probe.stderr, probe
            seen = json.loads(probe.stdout)
            assert seen["files"] == ["/sandbox/main.py"], seen["files"]
            assert len(seen["procs"]) == 2 and seen["procs"][0].startswith("python3 -I -c"), seen["procs"]
            assert seen["ipc"] == {"shm": [], "msg": [], "sem": []}
            assert sandbox.run("import json\nprint(json.dumps([1]))").stdout == "[1]\n"
        assert [c["Id"] for c in containers_of(client, owner_id())] == [container["Id"]]  # all in one container
    assert containers_of(client, owner_id()) == []


def test_pool_and_cold_give_the_same_results(client):
    programs = [f"print({i} ** 2)" for i in range(6)]
    with Sandbox(pool_size=0, client=client) as cold, Sandbox(pool_size=3, client=client) as warm:
        assert [r.stdout for r in cold.run_many(programs)] == [r.stdout for r in warm.run_many(programs)]
    assert containers_of(client, owner_id()) == []


# --- cleanup after a crash ---------------------------------------------------------------

RUNNER = """
import sys
from reason.sandboxes import Limits, Sandbox
sandbox = Sandbox(Limits(timeout_s=float(sys.argv[1])), pool_size=2).start()
sandbox.pool.wait_ready(120)
print("READY", flush=True)
sandbox.run(sys.argv[2])
print("FINISHED", flush=True)
"""


def _start_runner(tmp_path, timeout_s: float, code: str) -> subprocess.Popen:
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(timeout_s), code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout.readline().strip() == b"READY", proc.stderr.read()
    return proc


def _wait_for_program(client, owner: str, marker: str, limit_s: float = 120) -> None:
    """Block until one of ``owner``'s containers runs the user program (``marker`` in its
    process list): the runner is then mid-run."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        for info in containers_of(client, owner):
            try:
                top = client.api.top(info["Id"])
            except Exception:
                continue
            if any("main.py" in " ".join(map(str, p)) for p in top.get("Processes") or []):
                return
        time.sleep(0.2)
    pytest.fail(f"the runner never started the program ({marker})")


def _settled(client, owner: str) -> list[dict]:
    """The dead owner's containers once the engine has finished the requests it had in
    flight (a pool refill may still be completing a create when the runner dies)."""
    ids = None
    for _ in range(60):
        current = sorted(c["Id"] for c in containers_of(client, owner))
        if current == ids:
            break
        ids = current
        time.sleep(1)
    return containers_of(client, owner)


def test_sweep_removes_everything_a_sigkilled_runner_left(client, tmp_path):
    proc = _start_runner(tmp_path, 60, "import time\ntime.sleep(600)\n")
    owner = owner_id(proc.pid)
    try:
        _wait_for_program(client, owner, "sleep")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = _settled(client, owner)
    assert len(left) >= 2  # the running program and the pool's waiting containers
    assert sweep(client) >= len(left)
    assert containers_of(client, owner) == []


def test_program_of_a_dead_runner_still_stops_at_its_time_limit(client, tmp_path):
    """The in-container backstop: with nobody left to kill it, a spinning program is
    still stopped shortly after its timeout."""
    proc = _start_runner(tmp_path, 1, "while True:\n    pass\n")
    owner = owner_id(proc.pid)
    try:
        _wait_for_program(client, owner, "spin")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 120
    exited = []
    while time.monotonic() < deadline and not exited:
        exited = [c for c in containers_of(client, owner) if c["State"] == "exited"]
        time.sleep(0.5)
    try:
        assert exited, "the orphaned program was never stopped"
        assert "137" in exited[0]["Status"]  # SIGKILLed by the backstop, not finished
    finally:
        sweep(client)
    assert containers_of(client, owner) == []


def test_sweep_leaves_live_owners_alone(client):
    with Sandbox(pool_size=1, client=client) as sandbox:
        assert sandbox.pool.wait_ready(60)
        assert sweep(client) == 0 or containers_of(client, owner_id())  # ours survive any sweep
        assert len(containers_of(client, owner_id())) == 1
        assert sandbox.run("print('still here')").stdout == "still here\n"


# --- the verifier ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def verifier(client):
    from reason.plugins.verifiers.sandbox import SandboxVerifier

    # cold containers here; the runtime test below goes through the warm pool
    verifier = SandboxVerifier(Config(options={"sandbox_workers": 4, "sandbox_pool": 0}), "3")
    yield verifier
    verifier.close()


def test_verifier_scores_humaneval_solutions(verifier):
    tasks = [humaneval(i) for i in (0, 2, 10, 32)]
    requests = []
    for task in tasks:
        # the canonical body as a raw continuation, split into two steps
        body = task.reference
        half = len(body) // 2
        requests.append(ScoreRequest(task=task, prompt="", steps=(Step(text=body[:half]), Step(text=body[half:]))))
    entry = tasks[0].metadata["entry_point"]
    wrong = f"Sure:\n```python\ndef {entry}(numbers, threshold):\n    return True\n```"
    loops = f"```python\ndef {entry}(numbers, threshold):\n    while True:\n        pass\n```"
    crash = f"```python\ndef {entry}(numbers, threshold):\n    return undefined_name\n```"
    requests += [
        ScoreRequest(task=tasks[0], prompt="", steps=(Step(text="Let me think.\n\n"), Step(text=wrong), Step(text=""))),
        ScoreRequest(task=tasks[0], prompt="", steps=(Step(text=loops),)),
        ScoreRequest(task=tasks[0], prompt="", steps=(Step(text=crash),)),
    ]
    scores = verifier.score(requests)
    for score, request in zip(scores[:4], requests[:4]):
        assert score.passed is True, (request.task.id, score.feedback)
        assert score.step_scores == (1.0, 1.0) and score.feedback is None
    wrong_score, loop_score, crash_score = scores[4:]
    # (with the hidden tests this scored 0.0; one of the two public examples expects True)
    assert wrong_score.passed is False and wrong_score.step_scores == (0.5, 0.5, 0.5)
    assert "AssertionError: has_close_elements([1.0, 2.0, 3.0], 0.5) returned True, expected False" in wrong_score.feedback
    assert loop_score.passed is False and loop_score.step_scores == (0.0,) and "time limit" in loop_score.feedback
    assert crash_score.passed is False and crash_score.step_scores == (0.0,)
    # the failing line of the candidate's own code, read from the program file in the container
    assert "NameError: name 'undefined_name' is not defined (in has_close_elements: return undefined_name)" in crash_score.feedback


def test_verifier_caches_repeated_programs(verifier):
    task = humaneval(0)
    request = ScoreRequest(task=task, prompt="", steps=(Step(text=task.reference),))
    before = verifier.runs
    scores = verifier.score([request, request, request])
    assert [s.passed for s in scores] == [True] * 3
    assert verifier.runs - before <= 1


def test_verifier_refuses_tasks_without_tests(verifier):
    from reason.errors import VerifierError

    with pytest.raises(VerifierError, match="code task with tests"):
        verifier.score([ScoreRequest(task=Task(question="2+2?"), prompt="", steps=(Step(text="4"),))])


def test_verifier_inside_the_runtime_picks_the_passing_sample(client):
    """best-of-n with the sandbox verifier, batched by the scheduler: of four samples only
    one is right, and it is chosen."""
    sys.path.insert(0, str(Path(__file__).parent))
    from scripted import ScriptedBackend

    task = humaneval(0)
    entry = task.metadata["entry_point"]
    right = "```python\n" + f"def {entry}(numbers, threshold):\n" + task.reference + "```"
    wrongs = [
        f"```python\ndef {entry}(numbers, threshold):\n    return False\n```",
        f"```python\ndef {entry}(numbers, threshold):\n    return len(numbers) > 1\n```",
        "I do not know.",
    ]
    samples = [wrongs[0], wrongs[1], right, wrongs[2]]
    backend = ScriptedBackend(lambda request, i: samples[i % 4])
    others = sorted(c["Id"] for c in containers_of(client, owner_id()))  # the module's verifier's warm workers
    with Runtime(Config(search="best-of-n", n=4, verifier="sandbox", splitter="none"), backend=backend) as runtime:
        solution = runtime.solve(task)
    assert solution.score == 1.0
    assert "sorted" in solution.text or "abs(" in solution.text  # the canonical solution's body
    # the share of public tests passed: each wrong program still meets one of the two examples
    # (with the hidden tests these were all 0.0)
    assert sorted(c.score for c in solution.candidates) == [0.0, 0.5, 0.5, 1.0]
    assert sorted(c["Id"] for c in containers_of(client, owner_id())) == others  # closing the runtime closed its pool


def test_sandbox_feedback_drives_the_on_verifier_fail_reflection(client):
    """The sandbox's error reaches the model through the on-verifier-fail trigger, and the
    fixed program then passes."""
    sys.path.insert(0, str(Path(__file__).parent))
    from scripted import ScriptedBackend

    task = humaneval(0)
    entry = task.metadata["entry_point"]
    broken = f"```python\ndef {entry}(numbers, threshold):\n    return undefined_name\n```"
    fixed = (
        "```python\n" + f"def {entry}(numbers, threshold):\n"
        "    # compare every pair once; close means strictly below the threshold\n" + task.reference + "```"
    )
    prompts = []

    def script(request, index):
        prompts.append(request.prompt)
        return fixed if "NameError: name 'undefined_name'" in request.prompt else broken

    config = Config(search="best-of-n", n=1, verifier="sandbox", splitter="none", reflect=("on-verifier-fail",))
    with Runtime(config, backend=ScriptedBackend(script)) as runtime:
        solution = runtime.solve(task)
    assert len(prompts) == 2  # the first try, then the retry that saw the sandbox's error
    assert "NameError: name 'undefined_name' is not defined" in prompts[1]
    assert solution.score == 1.0


@pytest.mark.model
@pytest.mark.timeout(1800)  # the embedded model on a busy 2-core CI machine
def test_cli_solves_a_humaneval_task_with_the_embedded_model(client):
    proc = subprocess.run(
        [*REASON, "solve", "--task", "humaneval:HumanEval/0", "--search", "best-of-n", "--n", "4",
         "--verifier", "sandbox", "--max-tokens", "160", "--seed", "0", "--json"],
        capture_output=True, timeout=1700, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    stdout = proc.stdout.decode()
    data = json.loads(stdout[stdout.index("\n{") + 1 :] if not stdout.startswith("{") else stdout)
    scores = [c["score"] for c in data["candidates"]]
    assert len(scores) == 4 and all(0.0 <= s <= 1.0 for s in scores)  # shares of public tests passed
    assert data["score"] == max(scores)


# --- public tests only: the verifier never runs the hidden tests ------------------------------


def contradicting_task() -> Task:
    """A task whose hidden test contradicts its public tests: the public example says
    ``f(2) == 4``, the hidden check says ``f(2) == 5``."""
    return Task(
        question="Write f(x).",
        id="contradicting/0",
        kind="code",
        metadata={
            "prompt": "def f(x):\n    \"\"\">>> f(2)\n    4\n    \"\"\"\n",
            "entry_point": "f",
            "public_tests": ["assert f(2) == 4"],
            "test": "def check(candidate):\n    assert candidate(2) == 5\n",
        },
    )


def test_verifier_verdict_follows_the_public_tests_and_the_grader_the_hidden_ones(verifier):
    from reason.plugins.verifiers.sandbox import HiddenTestGrader

    task = contradicting_task()
    doubles = "```python\ndef f(x):\n    return 2 * x\n```"  # meets the public example
    plus_three = "```python\ndef f(x):\n    return x + 3\n```"  # meets the hidden check
    public = verifier.score([ScoreRequest(task=task, prompt="", steps=(Step(text=t),)) for t in (doubles, plus_three)])
    assert [s.passed for s in public] == [True, False]
    assert "f(2) returned 5, expected 4" in public[1].feedback and "candidate(2)" not in public[1].feedback
    grader = HiddenTestGrader(Config(options={"sandbox_workers": 2, "sandbox_pool": 0, "sandbox_timeout": 5}))
    try:
        assert grader.grade(task, [doubles, plus_three]) == [False, True]
    finally:
        grader.close()


def test_reflection_feeds_back_the_failing_public_test_never_the_hidden_one(client):
    sys.path.insert(0, str(Path(__file__).parent))
    from scripted import ScriptedBackend

    task = contradicting_task()
    prompts = []

    def script(request, index):
        prompts.append(request.prompt)
        if "f(2) returned 3, expected 4" in request.prompt:
            return "```python\ndef f(x):\n    return 2 * x\n```"
        return "```python\ndef f(x):\n    return x + 1\n```"

    config = Config(search="best-of-n", n=1, verifier="sandbox", splitter="none", reflect=("on-verifier-fail",))
    with Runtime(config, backend=ScriptedBackend(script)) as runtime:
        solution = runtime.solve(task)
    assert len(prompts) == 2
    assert "Failed: assert f(2) == 4" in prompts[1] and "AssertionError: f(2) returned 3, expected 4" in prompts[1]
    assert "candidate(2) == 5" not in prompts[1] and "check" not in prompts[1]
    assert solution.score == 1.0 and "2 * x" in solution.text


def test_eval_grades_with_the_hidden_tests_and_the_verifier_sees_none(client, tmp_path):
    """A HumanEval run end to end with a scripted model: the sandbox verifier's requests
    carry the public tests and no hidden test or reference; grading still uses the hidden
    tests; the one prompt without public tests is counted as unverified."""
    sys.path.insert(0, str(Path(__file__).parent))
    from scripted import ScriptedBackend

    from reason import get_registry
    from reason.eval.run import EvalRun
    from reason.plugins.verifiers.sandbox import SandboxVerifier

    seen: list[ScoreRequest] = []

    class Recording(SandboxVerifier):
        def score(self, requests):
            seen.extend(requests)
            return super().score(requests)

    records = {}
    with gzip.open(HUMANEVAL, "rt") as fh:
        for line in fh:
            record = json.loads(line)
            records[record["task_id"]] = record

    asked: dict[str, int] = {}

    def script(request, index):
        # first sample of a problem: the canonical solution; second: a stub that returns None
        for task_id in ("HumanEval/38", "HumanEval/47"):
            r = records[task_id]
            if f"def {r['entry_point']}(" in request.prompt:
                asked[task_id] = asked.get(task_id, 0) + 1
                body = r["canonical_solution"] if asked[task_id] == 1 else "    return None\n"
                return f"```python\n{r['prompt']}{body}```"
        return "I do not know."

    registry = get_registry()
    registry.add("verifier", "recording-sandbox", Recording, plugin="tests")
    try:
        config = Config(search="best-of-n", n=2, verifier="recording-sandbox", splitter="none", max_tokens=4096,
                        options={"sandbox_workers": 2, "sandbox_pool": 0})
        dataset = registry.create("dataset", "humaneval", config)
        run = EvalRun(dataset_spec="humaneval", dataset=dataset, config=config, out=tmp_path / "he", offset=38, limit=10)
        todo = [(i, t) for i, t in run.prepare() if i in (38, 47)]
        with Runtime(config, backend=ScriptedBackend(script)) as runtime:
            run.run(runtime, todo)
        summary = run.summarize()
        dataset.close()
    finally:
        registry.remove("verifier", "recording-sandbox")
    assert seen
    for request in seen:
        assert "test" not in request.task.metadata and request.task.reference is None
    assert {r.task.id for r in seen} == {"HumanEval/38", "HumanEval/47"}
    by_id = {r["task_id"]: r for r in run.records}
    # 47: the canonical median passes the hidden tests but fails the prompt's wrong example
    median = by_id["HumanEval/47"]
    assert [c["correct"] for c in median["candidates"]] == [True, False]
    assert [c["verifier_passed"] for c in median["candidates"]] == [False, False]
    assert median["verified"] is True and median["public_tests"] == 2
    # 38 has no examples: unverified, and still graded by its hidden tests
    decode = by_id["HumanEval/38"]
    assert decode["verified"] is False and decode["public_tests"] == 0
    assert [c["verifier_passed"] for c in decode["candidates"]] == [None, None]
    assert [c["score"] for c in decode["candidates"]] == [0.5, 0.5]
    assert [c["correct"] for c in decode["candidates"]] == [True, False]
    assert summary["unverified"] == 1 and summary["problems"] == 2
    assert summary["pass@2"] == 1.0 and "oracle" in summary["labels"]["pass"]
