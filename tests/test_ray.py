"""``reason eval --ray``: the same eval on a local two-node Ray cluster, problem by problem
the same as on one machine; a worker killed mid-run loses and repeats nothing; without
Ray, ``--ray`` is one line and exit 2, and a run without ``--ray`` never imports Ray.

The cluster is two raylets started by this module (``ray.cluster_utils.Cluster``: a head
and one more node, 1 CPU and a small object store each, no dashboard), so the workers
land on different nodes as on a real cluster; every eval is a ``reason eval`` subprocess,
the driver, that joins it by address. Runs are tiny: 6 MultiArith problems, best-of-n
n=2, 48 tokens, seeded, on the embedded SmolLM2-135M.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reason.eval.distributed import RAY_MISSING
from reason.eval.results import RESULTS

PROBLEMS = 6
EVAL = ["--dataset", "multiarith", "--limit", str(PROBLEMS), "--model", "smollm2", "--search", "best-of-n",
        "--n", "2", "--max-tokens", "48", "--seed", "7", "--no-plot", "--json", "-o", "threads=1"]

# The driver as a subprocess; it reports at exit whether Ray was ever imported.
DRIVER = """
import atexit, sys
atexit.register(lambda: print("ray imported:", "ray" in sys.modules, file=sys.stderr))
from reason.cli import main
main()
"""

# ...and the same with Ray made impossible to import, as where it is not installed.
NO_RAY = """
import sys
class NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, NoRay())
from reason.cli import main
main()
"""


def reason_eval(*args: str, code: str = DRIVER, **kw) -> subprocess.Popen:
    env = {**os.environ, "REASON_LOG_LEVEL": "info"}  # the pool logs its workers and losses
    return subprocess.Popen([sys.executable, "-c", code, "--log-json", "eval", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"reason eval did not finish in {timeout}s:\n{err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    return out, err


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS).read_text().splitlines()]


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["task_id"]: r for r in rows}


def logged(err: str, event: str) -> list[dict]:
    lines = []
    for line in err.splitlines():
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("event") == event:
                lines.append(entry)
    return lines


def same_results(ray_records: list[dict], local_records: list[dict]) -> None:
    """Every problem exactly once, and problem by problem the same: the chosen answer and
    its grade, every candidate's text, answer, grade and tokens, the token usage. Scores
    (from logprobs) agree to float noise: a batch of other rows sums in another order.
    Usage leaves out what the machine paid rather than what was asked: seconds, and the
    prompt tokens encoded, which depend on what the worker's prefix cache already held
    (a problem re-run on a worker that has served others finds their shared prefix)."""
    expected = [f"multiarith/{i}" for i in range(PROBLEMS)]
    assert sorted(r["task_id"] for r in ray_records) == sorted(r["task_id"] for r in local_records) == expected
    ray, local = by_id(ray_records), by_id(local_records)
    for task_id, want in local.items():
        got = ray[task_id]
        assert [got[k] for k in ("index", "answer", "correct")] == [want[k] for k in ("index", "answer", "correct")], task_id
        assert got["score"] == pytest.approx(want["score"], rel=1e-4), task_id
        usage = lambda r: {k: v for k, v in r["usage"].items() if k not in ("seconds", "encoded_tokens")}  # noqa: E731
        assert usage(got) == usage(want), task_id
        same = lambda cands: [{k: c[k] for k in ("text", "answer", "correct", "tokens")} for c in cands]  # noqa: E731
        assert same(got["candidates"]) == same(want["candidates"]), task_id
        scores = lambda r: [c["score"] for c in r["candidates"]]  # noqa: E731
        assert scores(got) == pytest.approx(scores(want), rel=1e-4), task_id


# --- without Ray -----------------------------------------------------------------------------


def test_ray_not_installed_is_one_line_and_exit_2(tmp_path):
    out = tmp_path / "run"
    proc = reason_eval(*EVAL, "--out", str(out), "--ray", code=NO_RAY)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and RAY_MISSING in lines[0], stderr
    assert not out.exists()  # refused before the run directory was made
    assert stdout == ""


def test_workers_without_ray_is_refused(tmp_path):
    proc = reason_eval(*EVAL, "--out", str(tmp_path / "run"), "--workers", "2")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "--workers needs --ray" in stderr, stderr


@pytest.fixture(scope="module")
def one_machine(tmp_path_factory):
    """The reference: the same eval on one machine, no Ray."""
    out = tmp_path_factory.mktemp("local") / "run"
    stdout, err = finish(reason_eval(*EVAL, "--out", str(out)))
    return records(out), json.loads(stdout), err


@pytest.mark.model
def test_eval_without_ray_never_imports_ray(one_machine):
    _, _, err = one_machine
    assert "ray imported: False" in err, err[-2000:]


# --- on a Ray cluster ------------------------------------------------------------------------


def _ray_processes() -> list:
    """(process, command line) of this test's Ray processes: the cluster's raylets, their
    workers, Ray's helpers."""
    import psutil

    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
            if ("ray::" in cmd or "/ray/" in cmd or "raylet" in cmd):
                found.append((proc, cmd))
        except psutil.Error:
            continue
    return found


def _eval_workers() -> list:
    """The processes of the running eval workers (Ray titles them ``ray::EvalWorker...``)."""
    return [proc for proc, cmd in _ray_processes() if cmd.startswith("ray::EvalWorker")]


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second node, 1 CPU each; every Ray process is gone afterwards."""
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    small = dict(num_cpus=1, object_store_memory=80 * 1024**2)
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={**small, "include_dashboard": False})
    try:
        cluster.add_node(**small)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()
        deadline = time.monotonic() + 30
        while left := [cmd for _, cmd in _ray_processes()]:
            if time.monotonic() > deadline:
                pytest.fail(f"Ray processes left after the cluster shut down: {left}")
            time.sleep(0.5)


@pytest.mark.ray
@pytest.mark.model
def test_two_workers_on_two_nodes_equal_one_machine(cluster, one_machine, tmp_path):
    out = tmp_path / "run"
    stdout, err = finish(reason_eval(*EVAL, "--out", str(out), "--ray", cluster, "--workers", "2"))
    local, local_summary, _ = one_machine
    same_results(records(out), local)
    ready = logged(err, "ray worker ready")
    assert len(ready) == 2 and len({w["node"] for w in ready}) == 2, err[-3000:]  # one per node
    summary = json.loads(stdout)  # stdout holds the driver's summary only, nothing from the workers
    metrics = ("problems", "accuracy", "maj@2", "weighted@2", "naive@2", "tokens_per_problem")
    assert {k: summary[k] for k in metrics} == {k: local_summary[k] for k in metrics}


@pytest.mark.ray
@pytest.mark.model
def test_a_worker_killed_mid_run_loses_and_repeats_nothing(cluster, one_machine, tmp_path):
    out = tmp_path / "run"
    # one problem at a time per worker: each worker has one in flight whenever the kill comes
    deadline = time.monotonic() + 60
    while _eval_workers() and time.monotonic() < deadline:
        time.sleep(0.2)  # the last run's workers are still exiting: do not take one of them for ours
    proc = reason_eval(*EVAL, "--out", str(out), "--ray", cluster, "--workers", "2", "--concurrency", "1")
    results = out / RESULTS
    deadline = time.monotonic() + 600
    while proc.poll() is None and not (results.exists() and results.read_text().count("\n") >= 1):
        assert time.monotonic() < deadline, "no problem finished in time"
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before a worker could be killed:\n" + proc.communicate()[1][-3000:]
    workers = _eval_workers()
    assert len(workers) == 2, [cmd for _, cmd in _ray_processes()]
    os.kill(workers[0].pid, signal.SIGKILL)

    _, err = finish(proc)
    got = records(out)
    ids = [r["task_id"] for r in got]
    assert sorted(ids) == [f"multiarith/{i}" for i in range(PROBLEMS)]  # each exactly once
    assert logged(err, "ray worker lost"), err[-3000:]  # its problem was re-run on the other
    same_results(got, one_machine[0])  # and re-run elsewhere, still the same results


@pytest.mark.ray
def test_a_workers_error_is_the_same_one_line_as_on_one_machine(cluster, tmp_path):
    bad = ["--model", str(tmp_path / "no-such-model"), "--limit", "1"]
    local = reason_eval(*EVAL, *bad, "--out", str(tmp_path / "local"))
    _, local_err = local.communicate(timeout=300)
    remote = reason_eval(*EVAL, *bad, "--out", str(tmp_path / "ray"), "--ray", cluster, "--workers", "1")
    _, remote_err = remote.communicate(timeout=300)
    last = lambda err: [line for line in err.splitlines() if line.startswith("reason: error:")]  # noqa: E731
    assert local.returncode != 0 and len(last(local_err)) == 1, local_err[-3000:]
    assert (remote.returncode, last(remote_err)) == (local.returncode, last(local_err)), remote_err[-3000:]
