"""The evaluation harness behind ``reason eval``: run a strategy over a dataset, grade
every candidate, write results crash-safely, and measure accuracy against compute.

Files in the run directory:

- ``run.json``: what was run (dataset, slice, the full config); a directory holds one run.
- ``results.jsonl``: one line per finished problem (question, reference, every candidate
  with its answer, scores, tokens and correctness, the chosen answer, usage, seconds),
  appended and fsynced as each problem finishes, so a crash loses at most the problems
  in flight, and ``--resume`` continues where the run stopped without repeating one.
- ``summary.json``: the metrics (see :func:`compute_metrics`), keys like ``"maj@4"``.
- ``accuracy_vs_budget.png``: accuracy against generated tokens per problem.

Metrics follow HF search-and-learn: from the N candidates of one run, maj@n, weighted@n
and naive@n for n = 1, 2, 4, ... N are computed on subsets of n candidates, here averaged
over every n-subset (or a fixed sample of them when there are many) rather than the first
n only, which removes the luck of the draw at small n; code tasks add the unbiased
pass@k of Chen et al. (2021).

Three kinds of number, never to be mixed up (:data:`METRIC_LABELS`): the strategy's own
choice (``accuracy``); what a selection rule would choose among n candidates (maj@n,
weighted@n, naive@n); and pass@n, an oracle upper bound (some candidate is right: no
strategy can choose by it, since it needs the grader's hidden tests).

The search never sees what grades it: each task is solved without its reference answer
and without grading-only metadata (HumanEval's hidden ``test``, worked solutions; see
:func:`search_view`); grading uses the full task.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import attrs
from attrs import define, field

from reason import Config, Dataset, Solution, Task
from reason.errors import UsageError

RESULTS = "results.jsonl"
RUN = "run.json"
SUMMARY = "summary.json"
PLOT = "accuracy_vs_budget.png"

MAX_SUBSETS = 256
"""Above this many n-subsets, metrics average over a fixed random sample of them."""

IGNORED_CONFIG_KEYS = ("options.data_dir", "options.threads")
"""Config entries that do not change results: a resumed run may differ in them."""

GRADING_ONLY = ("test", "solution", "canonical_solution")
"""Task metadata only grading may read: hidden tests and worked solutions."""

METRIC_LABELS = {
    "accuracy": "the strategy's choice: the answer the search returned",
    "maj": "maj@n: majority vote over n candidates",
    "weighted": "weighted@n: the answer whose candidates' verifier scores sum highest among n",
    "naive": "naive@n: the single best verifier score among n candidates",
    "pass": "pass@n: oracle upper bound, some of n candidates is right (needs the grader's tests; not a choice)",
}
"""What each reported number is (``summary.json`` carries it as ``labels``)."""
ORACLE_FAMILIES = ("pass",)
"""Metric families that are upper bounds, not something a strategy can reach by choosing."""


# --- budgets and subsets ----------------------------------------------------------------


def budgets(n: int) -> list[int]:
    """The sample budgets a run of ``n`` is measured at: 1, 2, 4, ... and ``n`` itself."""
    out, k = [], 1
    while k < n:
        out.append(k)
        k *= 2
    out.append(max(n, 1))
    return out


def subsets(size: int, k: int, seed: str = "") -> list[tuple[int, ...]]:
    """Index subsets of ``k`` out of ``size`` candidates: all of them, or ``MAX_SUBSETS``
    drawn with a seed derived from ``seed`` (the task id) so reruns agree."""
    k = min(k, size)
    if k <= 0:
        return [()]
    if math.comb(size, k) <= MAX_SUBSETS:
        return list(combinations(range(size), k))
    rng = random.Random(zlib.crc32(f"{seed}|{size}|{k}".encode()))
    return [tuple(sorted(rng.sample(range(size), k))) for _ in range(MAX_SUBSETS)]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021): the chance that at least one of ``k`` programs
    drawn without replacement from ``n`` with ``c`` correct is correct."""
    if k > n:
        k = n
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


# --- choosing within a subset -----------------------------------------------------------


def _pick_by_group(cands: Sequence[dict[str, Any]], subset: Sequence[int], weight: Callable[[dict[str, Any]], float]) -> int | None:
    """The candidate representing the answer group with the largest total weight in the
    subset (ties go to the group seen first, as :func:`reason.answers.vote` does)."""
    totals: dict[int, float] = {}
    first: dict[int, int] = {}
    for i in subset:
        group = cands[i].get("group")
        if group is None:
            continue
        totals[group] = totals.get(group, 0.0) + weight(cands[i])
        first.setdefault(group, i)
    if not totals:
        return None
    best = max(totals.values())
    winner = min((first[g] for g, total in totals.items() if total == best), key=lambda i: subset.index(i))
    return winner


def majority_choice(cands: Sequence[dict[str, Any]], subset: Sequence[int]) -> int | None:
    return _pick_by_group(cands, subset, lambda c: 1.0)


def weighted_choice(cands: Sequence[dict[str, Any]], subset: Sequence[int]) -> int | None:
    return _pick_by_group(cands, subset, lambda c: float(c.get("score") or 0.0))


def naive_choice(cands: Sequence[dict[str, Any]], subset: Sequence[int]) -> int | None:
    """The highest-scored candidate (ties: the first)."""
    best: int | None = None
    for i in subset:
        if best is None or (cands[i].get("score") or 0.0) > (cands[best].get("score") or 0.0):
            best = i
    return best


CHOOSERS: dict[str, Callable[[Sequence[dict[str, Any]], Sequence[int]], int | None]] = {
    "maj": majority_choice,
    "weighted": weighted_choice,
    "naive": naive_choice,
}


def _correct(cands: Sequence[dict[str, Any]], index: int | None) -> float:
    return 1.0 if index is not None and cands[index].get("correct") else 0.0


def problem_metrics(record: dict[str, Any], n: int) -> dict[str, float]:
    """One problem's expected accuracy of each rule at budget ``n`` (mean over subsets)."""
    cands = record.get("candidates") or []
    out: dict[str, float] = {}
    rules = ["naive"] if record.get("kind") == "code" else ["maj", "weighted", "naive"]
    picks = subsets(len(cands), n, record.get("task_id", "")) if cands else []
    for rule in rules:
        if not picks or not cands:
            out[f"{rule}@{n}"] = 0.0
            continue
        choose = CHOOSERS[rule]
        out[f"{rule}@{n}"] = sum(_correct(cands, choose(cands, s)) for s in picks) / len(picks)
    if record.get("kind") == "code":
        correct = sum(1 for c in cands if c.get("correct"))
        out[f"pass@{n}"] = pass_at_k(len(cands), correct, n) if cands else 0.0
    return out


def compute_metrics(records: Sequence[dict[str, Any]], n: int) -> dict[str, Any]:
    """Every metric of a run, averaged over its problems.

    Keys: ``accuracy`` (the strategy's own choice), ``maj@k`` / ``weighted@k`` /
    ``naive@k`` (and ``pass@k`` for code) for k in :func:`budgets`, ``tokens@k`` (generated
    tokens per problem at that budget: the run's, scaled by k/n), ``tokens_per_problem``,
    ``prompt_tokens_per_problem``, ``seconds_per_problem`` (wall clock, model loading
    excluded), ``latency_per_problem`` (mean time from start to answer of one problem).

    For best-of-n and self-consistency the candidates are independent samples, so a
    k-subset is exactly a k-sample run and ``tokens@k`` its cost. For step-level searches
    (beam, DVTS, MCTS) the candidates are the final paths of one search: ``@k`` votes over
    k of them and ``tokens@k`` only pro-rates that search's cost; their true budget point
    is ``@n`` (run each N separately to trace their curve)."""
    count = len(records)
    summary: dict[str, Any] = {"problems": count, "n": n, "budgets": budgets(n)}
    if not count:
        return summary
    summary["accuracy"] = sum(1 for r in records if r.get("correct")) / count
    summary["answered"] = sum(1 for r in records if r.get("answer") is not None) / count
    tokens = sum(r["usage"]["completion_tokens"] for r in records) / count
    summary["tokens_per_problem"] = tokens
    summary["prompt_tokens_per_problem"] = sum(r["usage"]["prompt_tokens"] for r in records) / count
    summary["seconds_per_problem"] = sum(r.get("wall_seconds", r["seconds"]) for r in records) / count
    summary["latency_per_problem"] = sum(r["seconds"] for r in records) / count
    summary["candidates_per_problem"] = sum(len(r.get("candidates") or []) for r in records) / count
    totals: dict[str, float] = {}
    for k in budgets(n):
        for record in records:
            for key, value in problem_metrics(record, k).items():
                totals[key] = totals.get(key, 0.0) + value
        summary[f"tokens@{k}"] = tokens * k / n
    summary.update({key: value / count for key, value in totals.items()})
    return summary


def metric_names(summary: dict[str, Any]) -> list[str]:
    """The metric families present in a summary, in display order (oracles last)."""
    return [m for m in ("maj", "weighted", "naive", "pass") if f"{m}@1" in summary]


def count_unverified(records: Sequence[dict[str, Any]], verifier: Any) -> int | None:
    """Code problems whose candidates got no pass/fail verdict from the verifier (the
    ``sandbox`` verifier on a task without public tests); ``None`` when the run has no
    code problems recorded with verdicts or its verifier gives none at all."""
    code = [r for r in records if r.get("kind") == "code" and "verified" in r]
    if not code:
        return None
    exact = any(r["verified"] for r in code) or str(verifier or "").split(":")[0] == "sandbox"
    return sum(1 for r in code if not r["verified"]) if exact else None


# --- grading ------------------------------------------------------------------------------


def group_answers(answers: Sequence[str | None]) -> list[int | None]:
    """Cluster equivalent answers (the notion voting uses): group ids in order of first
    appearance; ``None`` for no answer."""
    from reason.answers import is_equivalent

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


def grade_many(dataset: Dataset, task: Task, answers: Sequence[str | None]) -> list[bool]:
    """Grade answers for one task; datasets with a batch ``grade`` (HumanEval: one
    sandbox call) use it."""
    batch = getattr(dataset, "grade", None)
    if callable(batch):
        return [bool(v) for v in batch(task, list(answers))]
    return [bool(dataset.is_correct(task, a)) for a in answers]


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
        "meta": _jsonable(solution.meta),
    }
    if task.kind == "code":
        public = (task.metadata or {}).get("public_tests")
        record["public_tests"] = len(public) if isinstance(public, (list, tuple)) else int(bool(public))
        record["verified"] = any(c["verifier_passed"] is not None for c in candidates)
    if tree:
        record["tree"] = solution.tree.to_dict()
    return record


def _json_default(value: Any) -> Any:
    """attrs instances (e.g. a Score kept in a tree node's meta) as dicts; the rest as text."""
    import attrs

    if attrs.has(type(value)):
        return attrs.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_json_default))


# --- files ----------------------------------------------------------------------------------


class ResultsFile:
    """``results.jsonl``, append-only: each record is one line, flushed and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None

    def read(self, repair: bool = False) -> list[dict[str, Any]]:
        """The finished records; a duplicate id keeps its first record. A torn last line
        (a crash mid-write, or a write in progress) is ignored; with ``repair`` (only the
        run that is about to append) it is also cut off the file, so the next append
        starts on a clean line."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        good = data.rfind(b"\n") + 1
        if repair and good < len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(good)
                os.fsync(fh.fileno())
        data = data[:good]
        records: list[dict[str, Any]] = []
        seen: set[str] = set()
        for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise UsageError(f"{self.path}:{number} is not valid JSON; fix or remove that line to resume") from None
            if record.get("task_id") in seen:
                continue
            seen.add(record.get("task_id"))
            records.append(record)
        return records

    def append(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps(record, ensure_ascii=False, default=_json_default) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON ({exc.msg}); remove it or use another --out") from None


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def run_identity(dataset: str, config: Config) -> dict[str, Any]:
    """What makes two runs the same run (the slice is not part of it: a resumed run may
    go further)."""
    return _jsonable({"dataset": dataset, "config": config.to_dict()})


def identity_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if any(key == f"config.{ignored}" for ignored in IGNORED_CONFIG_KEYS):
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{key.removeprefix('config.')}: {a.get(key)!r} -> {b.get(key)!r}")
    return diffs


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
    concurrency: int = 16
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
        chosen = []
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
        each problem as it finishes. Returns every record of the run (old and new)."""
        index_of = {task.id: index for index, task in todo}
        full = {task.id: task for _, task in todo}
        results = self.results
        runtime.backend.load()  # seconds per problem exclude loading the model
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
                runtime.solve_many(
                    [search_view(t) for _, t in todo], concurrency=self.concurrency, on_solution=on_solution
                )
        finally:
            results.close()
        return self.records

    def summarize(self) -> dict[str, Any]:
        """Compute and write ``summary.json`` from every record of the run."""
        summary = summarize_records(self.records, self.config, self.dataset_spec)
        write_json(self.out / SUMMARY, summary)
        return summary


def summarize_records(records: Sequence[dict[str, Any]], config: Config | dict[str, Any], dataset: str) -> dict[str, Any]:
    cfg = config.to_dict() if isinstance(config, Config) else dict(config)
    ordered = sorted(records, key=lambda r: r.get("index", 0))
    summary = {
        "dataset": dataset,
        "search": cfg.get("search"),
        "verifier": cfg.get("verifier"),
        "model": cfg.get("model"),
        **compute_metrics(ordered, int(cfg.get("n") or 1)),
    }
    unverified = count_unverified(ordered, cfg.get("verifier"))
    if unverified is not None:
        summary["unverified"] = unverified
    if ordered:
        summary["labels"] = {k: v for k, v in METRIC_LABELS.items() if k == "accuracy" or f"{k}@1" in summary}
    summary["config"] = _jsonable(cfg)
    return summary


def load_run(directory: str | Path, only: set[str] | None = None) -> dict[str, Any]:
    """A finished (or interrupted, or running) run's summary: ``summary.json``, or
    recomputed from ``results.jsonl`` when that is missing or newer, or when ``only``
    restricts it to some task ids (to compare runs on the same problems)."""
    directory = Path(directory)
    results_path = directory / RESULTS
    summary_path = directory / SUMMARY
    if not results_path.exists() and not summary_path.exists():
        raise UsageError(f"{directory} holds no evaluation run (no {RESULTS} or {SUMMARY})")
    summary = read_json(summary_path)
    stale = summary is None or (results_path.exists() and results_path.stat().st_mtime > summary_path.stat().st_mtime)
    if stale or only is not None:
        run = read_json(directory / RUN) or {}
        identity = run.get("identity") or {}
        records = ResultsFile(results_path).read()
        if only is not None:
            records = [r for r in records if r.get("task_id") in only]
        summary = summarize_records(records, identity.get("config") or {}, identity.get("dataset", "?"))
    summary["dir"] = str(directory)
    return summary


def task_ids(directory: str | Path) -> set[str]:
    """The ids of the problems a run has finished."""
    return {r["task_id"] for r in ResultsFile(Path(directory) / RESULTS).read()}


# --- presentation ---------------------------------------------------------------------------


def dataset_label(spec: Any) -> str:
    """``jsonl:/long/path/x.jsonl`` -> ``x.jsonl``; names stay as they are."""
    spec = str(spec)
    return Path(spec[6:]).name if spec.startswith("jsonl:") else spec


def console() -> Any:
    """A rich console on stdout, wide enough for the tables when output is not a terminal."""
    from rich.console import Console

    out = Console()
    return out if out.is_terminal else Console(width=200)


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}" if isinstance(value, (int, float)) else "-"


ROW_LABELS = {
    "maj": "maj@n (majority vote)",
    "weighted": "weighted@n (score-weighted vote)",
    "naive": "naive@n (top verifier score)",
    "pass": "pass@n (oracle ceiling)",
}
"""Row names in the tables: what choosing among n candidates by each rule gives, and the
oracle upper bound, named as such."""


def _unverified_line(summary: dict[str, Any]) -> str | None:
    count = summary.get("unverified")
    if count is None:
        return None
    return (
        f"unverified: {count} of {summary.get('problems')} problems had no public tests, so the verifier could "
        "not check their candidates (scored 0.5; the search kept its first sample)"
    )


def summary_table(summary: dict[str, Any]) -> Any:
    """The end-of-run report: a title line; a table with the strategy's choice, one row
    per selection rule (maj@n, weighted@n, naive@n) and the oracle pass@n, one column per
    budget (and the tokens each budget costs); a line of costs and the legend."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    title = (
        f"{dataset_label(summary.get('dataset'))} · {summary.get('search')} n={summary.get('n')} · "
        f"verifier={summary.get('verifier') or 'none'} · {summary.get('problems')} problems"
    )
    table = Table()
    table.add_column("accuracy %", style="bold")
    ks = summary.get("budgets") or []
    for k in ks:
        table.add_column(f"@{k}", justify="right")
    if ks:
        table.add_row(f"{summary.get('search')}'s choice", *([""] * (len(ks) - 1)), _pct(summary.get("accuracy")),
                      style="bold green")
    for family in metric_names(summary):
        row = [ROW_LABELS[family], *(_pct(summary.get(f"{family}@{k}")) for k in ks)]
        table.add_row(*row, style="dim italic" if family in ORACLE_FAMILIES else None)
    table.add_row("tokens", *(f"{summary.get(f'tokens@{k}', 0):.0f}" for k in ks), style="dim")
    lines = [
        f"strategy's choice: {_pct(summary.get('accuracy'))}% · "
        f"{summary.get('tokens_per_problem', 0):.0f} generated tokens/problem · "
        f"{summary.get('seconds_per_problem', 0):.2f} s/problem "
        f"(latency {summary.get('latency_per_problem', 0):.2f} s)"
    ]
    if "pass@1" in summary:
        lines.append(
            "pass@n is an oracle upper bound (some of n candidates passes the hidden tests); "
            "no strategy can choose by it. pass@1 is one sample's accuracy."
        )
    unverified = _unverified_line(summary)
    if unverified:
        lines.append(unverified)
    return Group(Text(title, style="bold"), table, *(Text(line) for line in lines))


def compare_table(summaries: Sequence[dict[str, Any]]) -> Any:
    """One row per run: its choice, each selection rule at its full budget, the oracle
    pass@N (labelled as the ceiling it is), and its costs."""
    from rich.table import Table

    families = [f for f in ("maj", "weighted", "naive", "pass") if any(f"{f}@1" in s for s in summaries)]
    table = Table(title="reason eval compare", title_justify="left")
    for name in ("run", "dataset", "search", "n", "problems", "choice %"):
        table.add_column(name, justify="right" if name in ("n", "problems", "choice %") else "left")
    for family in families:
        table.add_column(f"{family}@N % (oracle)" if family in ORACLE_FAMILIES else f"{family}@N %", justify="right")
    code = any("pass@1" in s for s in summaries)
    if code:
        table.add_column("pass@1 % (1 sample)", justify="right")
        table.add_column("unverified", justify="right")
    table.add_column("tokens/problem", justify="right")
    table.add_column("s/problem", justify="right")
    for s in summaries:
        n = s.get("n")
        row = [
            Path(s.get("dir", "?")).name,
            dataset_label(s.get("dataset")),
            str(s.get("search")),
            str(n),
            str(s.get("problems")),
            _pct(s.get("accuracy")),
            *(_pct(s.get(f"{family}@{n}")) for family in families),
        ]
        if code:
            row.append(_pct(s.get("pass@1")))
            row.append(str(s["unverified"]) if s.get("unverified") is not None else "-")
        row += [f"{s.get('tokens_per_problem', 0):.0f}", f"{s.get('seconds_per_problem', 0):.2f}"]
        table.add_row(*row)
    if code:
        table.caption = "pass@N is an oracle upper bound (needs the grader's tests), not a strategy's result"
    return table


def records_in(directory: Path) -> Iterable[dict[str, Any]]:
    return ResultsFile(directory / RESULTS).read()
