"""Search strategies side by side at equal N (issue 3's closing note).

Runs greedy, self-consistency, best-of-n, beam, dvts, mcts and deepconf at N = 4 and 8
on the first problems of MultiArith with the embedded model, each strategy over all
problems at once through ``Runtime.solve_many`` (batched across problems), and reports
accuracy, generated tokens per problem and wall seconds per problem (the run's wall time
divided by the problems: problems run side by side, so per-solve times overlap).

    .venv/bin/python benchmarks/strategies.py --limit 50
    .venv/bin/python benchmarks/strategies.py --limit 10 --ns 4 --strategies greedy,beam --out results.json --threads 1

Settings (the same for every strategy unless said): T=0.8, seed 0, max 256 tokens per
solution, steps split at blank lines (at most 64 tokens), the ``confidence`` verifier
(Marco-o1 mean token confidence; the only verifier that needs no extra model).
best-of-n, beam and dvts choose by weighted vote; beam and dvts use M=2; mcts runs N
iterations with expansion width 2 and mean aggregation; deepconf uses its default 2 warm-up
traces, a 32-token window checked every 32 tokens, and the 10th percentile.
Greedy does not depend on N and runs once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from reason import Config, Runtime, Task
from reason.answers import is_equivalent

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "multiarith" / "test.jsonl"
STRATEGIES = ("greedy", "self-consistency", "best-of-n", "beam", "dvts", "mcts", "deepconf")

BASE = dict(temperature=0.8, seed=0, max_tokens=256, step_tokens=64, splitter="step", verifier="confidence")
SETTINGS: dict[str, dict[str, Any]] = {
    "greedy": {},
    "self-consistency": {"verifier": "none"},
    "best-of-n": {"weighted": True},
    "beam": {"weighted": True, "beam_width": 2},
    "dvts": {"weighted": True, "beam_width": 2},
    "mcts": {"aggregation": "mean", "options": {"expansion_width": 2}},
    "deepconf": {"verifier": "none", "options": {"window": 32, "chunk": 32, "percentile": 10}},
}


def load_tasks(limit: int) -> list[Task]:
    lines = DATA.read_text().splitlines()[:limit]
    tasks = []
    for i, line in enumerate(lines):
        row = json.loads(line)
        tasks.append(Task(question=row["input"], id=f"multiarith-{i}", reference=str(row["target"])))
    return tasks


def run_one(runtime: Runtime, tasks: list[Task], search: str, n: int) -> dict[str, Any]:
    overrides = {**BASE, **SETTINGS[search], "search": search, "n": n}
    start = time.perf_counter()
    solutions = runtime.solve_many(tasks, **overrides)
    wall = time.perf_counter() - start
    correct = sum(
        1 for s in solutions if s.answer is not None and s.task.reference is not None and is_equivalent(s.answer, s.task.reference)
    )
    count = len(solutions)
    row: dict[str, Any] = {
        "search": search,
        "n": n,
        "problems": count,
        "accuracy": correct / count,
        "tokens_per_problem": sum(s.usage.completion_tokens for s in solutions) / count,
        "seconds_per_problem": wall / count,
        "model_calls": max(s.usage.model_calls for s in solutions),
    }
    if search == "deepconf":
        row["deepconf_saved_fraction"] = sum(s.meta.get("saved_fraction", 0.0) for s in solutions) / count
        row["deepconf_stopped"] = sum(s.meta.get("stopped", 0) for s in solutions)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| strategy | N | accuracy | generated tokens / problem | seconds / problem |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['search']} | {r['n']} | {r['accuracy']:.0%} ({round(r['accuracy'] * r['problems'])}/{r['problems']}) "
            f"| {r['tokens_per_problem']:.0f} | {r['seconds_per_problem']:.2f} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=50, help="first LIMIT MultiArith problems [50]")
    parser.add_argument("--ns", type=int, nargs="+", default=[4, 8], help="budgets N [4 8]")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated subset")
    parser.add_argument("--max-tokens", type=int, default=BASE["max_tokens"])
    parser.add_argument("--out", help="also write the rows as JSON here")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (1 is fastest on a busy small machine)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    BASE["max_tokens"] = args.max_tokens
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        parser.error(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    tasks = load_tasks(args.limit)
    runtime = Runtime(Config())
    runtime.solve("What is 1 + 1?", search="greedy", max_tokens=4)  # load the model outside the timings
    rows = []
    try:
        for search in strategies:
            for n in ([1] if search == "greedy" else args.ns):
                row = run_one(runtime, tasks, search, n)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                if args.out:
                    Path(args.out).write_text(json.dumps(rows, indent=1))
    finally:
        runtime.close()
    print(f"MultiArith, first {len(tasks)} problems, SmolLM2-135M-Instruct (embedded), max {BASE['max_tokens']} tokens\n")
    print(table(rows))


if __name__ == "__main__":
    main()
