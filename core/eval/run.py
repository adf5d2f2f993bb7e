"""The evaluation harness behind ``reason eval``: run a strategy over a dataset, grade
every candidate, write results crash-safely, and measure accuracy against compute.

The parts: :mod:`~reason.eval.run` (this module: the run, one graded record per
problem), :mod:`~reason.eval.grading` (is a candidate right), :mod:`~reason.eval.results`
(the run directory's files), :mod:`~reason.eval.metrics` (maj@n, weighted@n, naive@n,
pass@k), :mod:`~reason.eval.report` (tables), :mod:`~reason.eval.plots` and
:mod:`~reason.eval.cli` (``reason eval``).

The search never sees what grades it: each task is solved without its reference answer
and without grading-only metadata (HumanEval's hidden ``test``, worked solutions; see
:func:`search_view`); grading uses the full task.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
from attrs import define, field

from reason import Config, Dataset, Solution, Task
from reason.answers import group_answers
from reason.errors import UsageError

from .grading import grade_many
from .results import (
    RESULTS,
    RUN,
    SUMMARY,
    ResultsFile,
    identity_differences,
    jsonable,
    read_json,
    run_identity,
    summarize_records,
    write_json,
)

GRADING_ONLY = ("test", "solution", "canonical_solution")
"""Task metadata only grading may read: hidden tests and worked solutions."""


def search_view(task: Task) -> Task:
    """The task as a search sees it in an evaluation: without its reference answer and
    without grading-only metadata (:data:`GRADING_ONLY`), so no verifier or search can
    choose by what grades it."""
    metadata = {k: v for k, v in (task.metadata or {}).items() if k not in GRADING_ONLY}
    return attrs.evolve(task, reference=None, metadata=metadata)


def make_record(
    dataset: Dataset, solution: Solution, index: int, wall_seconds: float, tree: bool = False, task: Task | None = None
) -> dict[str, Any]:
    """One line of results.jsonl: the problem, every candidate graded, the choice, cost.
    ``task`` is the full task to grade with (default: the solution's own)."""
    task = task if task is not None else solution.task
    cands = solution.candidates
    answers = [c.answer for c in cands]
    chosen = solution.answer
    # the choice is normally one of the candidates: grade it with them, in one batch
    extra = [] if chosen is None or chosen in answers else [chosen]
    verdicts = grade_many(dataset, task, [*answers, *extra])
    if chosen is None:
        chosen_correct = False
    elif extra:
        chosen_correct = verdicts.pop()
    else:
        chosen_correct = verdicts[answers.index(chosen)]
    if task.kind == "code":
        groups: list[int | None] = [None] * len(cands)
    else:
        groups = group_answers(answers)
    candidates = []
    for cand, verdict, group in zip(cands, verdicts, groups):
        node = solution.tree[cand.node_id] if cand.node_id < len(solution.tree) else None
        score = node.meta.get("score") if node is not None else None
        candidates.append(
            {
                "answer": cand.answer,
                "score": cand.score,
                "step_scores": [round(s, 6) for s in cand.step_scores],
                "correct": verdict,
                "verifier_passed": getattr(score, "passed", None),
                "group": group,
                "tokens": node.num_tokens if node is not None else None,
                "node": cand.node_id,
                "text": cand.text,
            }
        )
    record: dict[str, Any] = {
        "task_id": task.id,
        "index": index,
        "kind": task.kind,
        "question": task.question,
        "reference": task.reference,
        "answer": chosen,
        "correct": bool(chosen_correct),
        "score": solution.score,
        "candidates": candidates,
        "usage": solution.usage.to_dict(),
        "seconds": round(solution.seconds, 3),
        "wall_seconds": round(wall_seconds, 3),
        "meta": jsonable(solution.meta),
    }
    if task.kind == "code":
        public = (task.metadata or {}).get("public_tests")
        record["public_tests"] = len(public) if isinstance(public, (list, tuple)) else int(bool(public))
        record["verified"] = any(c["verifier_passed"] is not None for c in candidates)
    if tree:
        record["tree"] = solution.tree.to_dict()
    return record


# --- the run ----------------------------------------------------------------------------------


@define
class EvalRun:
    """One evaluation: a dataset slice solved with one config, written to ``out``."""

    dataset_spec: str
    dataset: Dataset
    config: Config
    out: Path
    offset: int = 0
    limit: int | None = None
    resume: bool = False
    save_tree: bool = False
    concurrency: int | None = None
    """Problems in flight (``None``: the runtime's :meth:`~reason.Runtime.concurrency_for`)."""
    records: list[dict[str, Any]] = field(factory=list)

    @property
    def results(self) -> ResultsFile:
        return ResultsFile(self.out / RESULTS)

    def select(self) -> list[tuple[int, Task]]:
        """The dataset slice ``[offset, offset+limit)`` as (index, task)."""
        if self.offset < 0:
            raise UsageError(f"--offset must be >= 0, got {self.offset}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be at least 1, got {self.limit}")
        chosen: list[Any] = []
        for index, task in enumerate(self.dataset.load()):
            if index < self.offset:
                continue
            if self.limit is not None and len(chosen) >= self.limit:
                break
            chosen.append((index, task))
        if not chosen:
            raise UsageError(f"dataset {self.dataset_spec!r} has no problems at --offset {self.offset}")
        return chosen

    def prepare(self) -> list[tuple[int, Task]]:
        """Check the directory against this run and load finished records; returns the
        problems still to solve. Refuses to mix runs or to repeat problems."""
        identity = run_identity(self.dataset_spec, self.config)
        run_file = self.out / RUN
        existing = read_json(run_file)
        results = self.results
        finished = results.read(repair=self.resume) if results.path.exists() else []
        if existing is not None or finished:
            old = (existing or {}).get("identity")
            diffs = identity_differences(old, identity) if old is not None else []
            if diffs:
                raise UsageError(
                    f"{self.out} holds results of a different run ({'; '.join(diffs[:6])}"
                    f"{' ...' if len(diffs) > 6 else ''}); resuming it with these settings would mix them. "
                    "Use another --out DIR, or repeat the original options with --resume."
                )
            if finished and not self.resume:
                raise UsageError(
                    f"{self.out} already holds results for {len(finished)} problem(s) of this run; "
                    "pass --resume to continue it (finished problems are skipped), or use another --out DIR"
                )
        self.out.mkdir(parents=True, exist_ok=True)
        if existing is None:
            write_json(run_file, {"identity": identity, "offset": self.offset, "limit": self.limit})
        self.records = finished
        done = {r["task_id"] for r in finished}
        todo = [(i, t) for i, t in self.select() if t.id not in done]
        ids = [t.id for _, t in todo]
        if len(set(ids)) != len(ids):
            raise UsageError(f"dataset {self.dataset_spec!r} has duplicate task ids; results need unique ids")
        return todo

    def run(
        self,
        runtime: Any,
        todo: Sequence[tuple[int, Task]],
        on_record: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Solve ``todo`` on ``runtime`` (batched across problems), grading and appending
        each problem as it finishes. Returns every record of the run (old and new).

        ``runtime`` is a :class:`~reason.Runtime`, or anything with its ``solve_many``
        and a ``load()`` (:class:`reason.eval.distributed.RayPool`: solutions come from
        Ray workers, and are graded and written here all the same)."""
        index_of = {task.id: index for index, task in todo}
        full = {task.id: task for _, task in todo}
        results = self.results
        load = getattr(runtime, "load", None) or runtime.backend.load
        load()  # seconds per problem exclude loading the model(s)
        last = time.perf_counter()

        def on_solution(solution: Solution) -> None:
            nonlocal last
            now = time.perf_counter()
            task = full[solution.task.id]
            record = make_record(self.dataset, solution, index_of[task.id], now - last, self.save_tree, task=task)
            last = now
            results.append(record)
            self.records.append(record)
            if on_record is not None:
                on_record(record)

        try:
            if todo:
                runtime.solve_many([search_view(t) for _, t in todo], concurrency=self.concurrency, on_solution=on_solution)
        finally:
            results.close()
        return self.records

    def summarize(self) -> dict[str, Any]:
        """Compute and write ``summary.json`` from every record of the run."""
        summary = summarize_records(self.records, self.config, self.dataset_spec)
        write_json(self.out / SUMMARY, summary)
        return summary
