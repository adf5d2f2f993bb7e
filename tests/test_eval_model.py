"""`reason eval` on the real data with the real embedded model (SmolLM2-135M, CPU).

Runs are tiny (2 problems, n=2, a few dozen tokens) so they fit a slow shared machine.
Every metric of each run is recomputed by hand from results.jsonl with independent code
(re-extracting answers from the texts, re-grading them, voting with reason.answers.vote),
and a `reason eval` subprocess killed with SIGKILL mid-run is resumed to completion with
every problem exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from reason import Config, Runtime, get_registry
from reason.answers import extract_answer, vote
from reason.eval.results import RESULTS
from reason.eval.run import EvalRun

pytestmark = pytest.mark.model

TINY = dict(n=2, max_tokens=32, seed=7, verifier="confidence", search="best-of-n")


@pytest.fixture(scope="module")
def backend():
    backend = get_registry().create("backend", "transformers", Config())
    backend.load()  # once for the module
    yield backend
    backend.close()


def evaluate(backend, dataset_name, out, limit=2, **config):
    config = Config(**{**TINY, **config})
    dataset = get_registry().create("dataset", dataset_name, config)
    run = EvalRun(dataset_spec=dataset_name, dataset=dataset, config=config, out=out, limit=limit)
    try:
        todo = run.prepare()
        with Runtime(config, backend=backend) as runtime:
            run.run(runtime, todo)
        summary = run.summarize()
    finally:
        dataset.close()
    records = [json.loads(line) for line in (out / RESULTS).read_text().splitlines()]
    return dataset, summary, records


def check_by_hand(dataset, summary, records):
    """Recompute every math metric of a best-of-n n=2 run from the raw texts."""
    tasks = {t.id: t for t in get_registry().create("dataset", summary["dataset"], Config()).load() if t.id in {r["task_id"] for r in records}}
    maj1 = maj2 = wei2 = nai2 = choice = 0.0
    for r in records:
        task = tasks[r["task_id"]]
        assert r["reference"] == task.reference and r["question"] == task.question
        answers = [extract_answer(c["text"]) for c in r["candidates"]]
        assert answers == [c["answer"] for c in r["candidates"]]
        right = [dataset.is_correct(task, a) for a in answers]
        assert right == [c["correct"] for c in r["candidates"]]
        scores = [c["score"] for c in r["candidates"]]
        assert len(answers) == 2
        maj1 += sum(right) / 2
        winner, _ = vote(answers)
        maj2 += winner is not None and dataset.is_correct(task, winner)
        winner, _ = vote(answers, scores)
        wei2 += winner is not None and dataset.is_correct(task, winner)
        nai2 += right[0] if scores[0] >= scores[1] else right[1]
        # best-of-n (naive) chooses the highest score, and the run graded that choice
        best = max(r["candidates"], key=lambda c: c["score"])
        assert r["answer"] == best["answer"]
        choice += dataset.is_correct(task, r["answer"])
        assert r["usage"]["completion_tokens"] == sum(c["tokens"] for c in r["candidates"])
        assert all(0 < c["tokens"] <= TINY["max_tokens"] for c in r["candidates"])
    count = len(records)
    assert summary["problems"] == count
    for key, value in (("maj@1", maj1), ("weighted@1", maj1), ("naive@1", maj1), ("maj@2", maj2),
                       ("weighted@2", wei2), ("naive@2", nai2), ("accuracy", choice)):
        assert summary[key] == pytest.approx(value / count), key
    tokens = sum(r["usage"]["completion_tokens"] for r in records) / count
    assert summary["tokens_per_problem"] == pytest.approx(tokens)
    assert summary["tokens@1"] == pytest.approx(tokens / 2)


@pytest.mark.parametrize("name", ["multiarith", "gsm8k", "math500"])
def test_tiny_real_run_metrics_match_a_hand_computation(backend, tmp_path, name):
    dataset, summary, records = evaluate(backend, name, tmp_path / name)
    assert [r["task_id"] for r in sorted(records, key=lambda r: r["index"])] == [f"{name}/0", f"{name}/1"]
    check_by_hand(dataset, summary, records)
    assert (tmp_path / name / "summary.json").exists()


@pytest.mark.docker
def test_tiny_humaneval_run_is_graded_in_the_sandbox(backend, tmp_path):
    dataset, summary, records = evaluate(backend, "humaneval", tmp_path / "he", limit=1, max_tokens=48, verifier="none")
    (record,) = records
    assert record["task_id"] == "HumanEval/0" and record["kind"] == "code"
    right = [c["correct"] for c in record["candidates"]]
    # independent re-grading in the sandbox agrees, and the canonical solution passes
    task = next(iter(get_registry().create("dataset", "humaneval", Config()).load()))
    grader = get_registry().create("dataset", "humaneval", Config())
    try:
        assert grader.grade(task, [c["answer"] for c in record["candidates"]]) == right
        assert grader.grade(task, [task.reference, "    return 'nope'\n"]) == [True, False]
    finally:
        grader.close()
    assert summary["pass@1"] == pytest.approx(sum(right) / 2)
    assert summary["pass@2"] == (1.0 if any(right) else 0.0)
    assert "maj@1" not in summary


def reason_eval(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-c", "from reason.cli import main; main()", "eval", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw,
    )


def test_sigkill_mid_run_then_resume_ends_with_every_problem_once(tmp_path):
    out = tmp_path / "run"
    args = ["--dataset", "multiarith", "--limit", "5", "--n", "2", "--max-tokens", "12", "--seed", "1",
            "--concurrency", "1", "--out", str(out)]
    proc = reason_eval(*args)
    results = out / RESULTS
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and results.read_text().count("\n") >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = [json.loads(line)["task_id"] for line in results.read_text().splitlines()]
    assert 1 <= len(before) < 5

    # without --resume the directory is refused, and nothing is written
    refused = reason_eval(*args)
    refused_output, _ = refused.communicate(timeout=300)
    assert refused.returncode == 2 and "--resume" in refused_output, refused_output
    assert [json.loads(line)["task_id"] for line in results.read_text().splitlines()] == before

    resumed = reason_eval(*args, "--resume")
    output, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, output
    ids = [json.loads(line)["task_id"] for line in results.read_text().splitlines()]
    assert sorted(ids) == [f"multiarith/{i}" for i in range(5)]
    assert ids[: len(before)] == before  # the old lines are untouched, and none repeats
    summary = json.loads((out / "summary.json").read_text())
    assert summary["problems"] == 5
    assert "maj" in output and "@2" in output
    assert (out / "accuracy_vs_budget.png").stat().st_size > 1000
