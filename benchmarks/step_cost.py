"""What a step search costs against sampling, on one engine, in one process (issue 27).

Runs self-consistency@N, beam@N and DeepConf@N over the first PROBLEMS of GSM8K test at
the quality table's settings (default model, T=0.8, seed 0, 512 tokens, steps at blank
lines of at most 64 tokens; beam M=2 by weighted confidence; DeepConf 32-token windows
checked every 32 tokens, 10th percentile), one strategy after the other on the same
loaded engine, ``solve_many`` with every problem queued. Per strategy:

- wall seconds per problem and its ratio to self-consistency's in the same run;
- generated tokens per problem, and tokens/s;
- prompt tokens requested (once per request, as the quality table counts them) and
  encoded (over every sample: what the prefix cache did not serve), and their ratio;
- the mean of the engine's busy rows over its decode steps, against its rows; the same
  mean over the steps while problems still waited for a place in flight (until the last
  one started; only when there are more problems than start at once); and over the steps
  while any work was pending: a problem not started yet, or requests waiting in the
  engine's queue (what issue 27's "rows busy while work is pending" asks);
- when the first problem finished; the problems in flight: started at once, and the most
  at once (more start while the engine's rows are idle).

``--arm`` picks the engine settings, so that a before/after pair runs the same problems:
``new`` is the runtime's defaults (vLLM's CPU block 32, problems in flight sized from the
engine's rows, DeepConf's online traces streamed); ``old`` is what it did before (block
128, 16 problems in flight, DeepConf one request per chunk). Writes
``OUT/ARM.json``; ``--table`` prints the markdown table of every arm in OUT.

    .venv/bin/python benchmarks/step_cost.py --arm new --problems 16 --out benchmarks/results/step_cost
    .venv/bin/python benchmarks/step_cost.py --arm old --problems 16 --out benchmarks/results/step_cost
    .venv/bin/python benchmarks/step_cost.py --table --out benchmarks/results/step_cost
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from reason import Config, Runtime, get_registry
from reason.events import EngineStep, SearchFailed, SearchFinished, SearchStarted

SEARCHES: dict[str, dict[str, Any]] = {
    "self-consistency": {"verifier": "none"},
    "beam": {"verifier": "confidence", "beam_width": 2, "weighted": True},
    "deepconf": {"verifier": "none", "options": {"window": 32, "chunk": 32, "percentile": 10}},
}
ARMS: dict[str, dict[str, Any]] = {
    "new": {"backend": {}, "concurrency": None, "deepconf": {}},
    "old": {"backend": {"block_size": 128}, "concurrency": 16, "deepconf": {"stream": False}},
}


def run_search(runtime: Runtime, tasks: list[Any], search: str, n: int, arm: dict[str, Any], dataset: Any) -> dict[str, Any]:
    overrides = dict(SEARCHES[search], search=search, n=n)
    overrides["options"] = {**overrides.get("options", {}), **(arm["deepconf"] if search == "deepconf" else {})}
    backend = runtime.backend
    filling = runtime.filling_for(runtime.config.replace(**overrides), arm["concurrency"])
    stats_before = backend.stats.to_dict()
    finished: list[float] = []
    # The engine's counters when the last problem starts: from then on no problem waits.
    started: list[dict[str, Any]] = []
    running = [0, 0]  # searches running now, most at once
    pending = [0, 0]  # decode steps while work was pending, busy rows summed over them

    def on_event(event: Any) -> None:
        if isinstance(event, EngineStep):
            if event.running and (event.waiting or len(started) < len(tasks)):
                pending[0] += 1
                pending[1] += event.running
        elif isinstance(event, SearchStarted):
            started.append(backend.stats.to_dict())
            running[0] += 1
            running[1] = max(running)
        elif isinstance(event, (SearchFinished, SearchFailed)):
            running[0] -= 1

    def on_solution(solution: Any) -> None:
        finished.append(time.perf_counter())

    stop = runtime.subscribe(on_event)
    start = time.perf_counter()
    try:
        solutions = runtime.solve_many(tasks, concurrency=arm["concurrency"], on_solution=on_solution, **overrides)
    finally:
        stop()
    seconds = time.perf_counter() - start
    stats = backend.stats.to_dict()
    steps, rows = busy(stats_before, stats)
    last_start = started[-1] if len(started) == len(tasks) > filling.floor else None
    queued_steps, queued_rows = busy(stats_before, last_start) if last_start else (0, 0)
    prompt = sum(s.usage.prompt_tokens for s in solutions)
    encoded = sum(s.usage.encoded_tokens for s in solutions)
    generated = sum(s.usage.completion_tokens for s in solutions)
    correct = sum(1 for s in solutions if dataset.is_correct(s.task, s.answer))
    return {
        "search": search,
        "n": n,
        "problems": len(tasks),
        "concurrency": filling.floor,
        "concurrency_ceiling": filling.ceiling,
        "in_flight_most": running[1],
        "accuracy": round(correct / len(tasks), 3),
        "seconds_per_problem": round(seconds / len(tasks), 2),
        "tokens_per_problem": round(generated / len(tasks), 1),
        "tok_per_s": round(generated / seconds, 1),
        "prompt_tokens_per_problem": round(prompt / len(tasks), 1),
        "encoded_tokens_per_problem": round(encoded / len(tasks), 1),
        "encoded_share": round(encoded / prompt, 3) if prompt else None,
        "mean_busy_rows": round(rows / steps, 1) if steps else None,
        "mean_busy_rows_queued": round(queued_rows / queued_steps, 1) if queued_steps else None,
        "mean_busy_rows_pending": round(pending[1] / pending[0], 1) if pending[0] else None,
        "pending_steps_share": round(pending[0] / steps, 3) if steps else None,
        "rows": backend.rows,
        "first_problem_s": round(finished[0] - start, 1) if finished else None,
        "seconds": round(seconds, 1),
        "deepconf_stopped": sum(int(s.meta.get("stopped", 0)) for s in solutions) if search == "deepconf" else None,
        "answers": [s.answer for s in solutions],
    }


def busy(before: dict[str, Any], after: dict[str, Any]) -> tuple[int, int]:
    """The engine's decode steps and busy rows summed over them, between two snapshots."""
    return after["decode_steps"] - before["decode_steps"], after["decode_rows"] - before["decode_rows"]


def pending_rows(row: dict[str, Any]) -> str:
    """Busy rows while work was pending, and on what share of the decode steps (results
    before that was measured say "-")."""
    if row.get("mean_busy_rows_pending") is None:
        return "-"
    return f"{row['mean_busy_rows_pending']} ({row['pending_steps_share']})"


def in_flight(row: dict[str, Any]) -> str:
    """Problems in flight: the number started at once, and the most at once where idle rows
    started more (results before that was measured say only the first)."""
    most = row.get("in_flight_most")
    return f"{row['concurrency']}, at most {most}" if most and most > row["concurrency"] else str(row["concurrency"])


def table(out: Path) -> str:
    lines = [
        "| arm | search | s/problem | vs SC | tokens/problem | tok/s | prompt tokens requested / encoded per problem (share) "
        "| busy rows (while problems wait) | busy rows while work is pending (share of steps) | in flight | first done (s) | accuracy |",
        "|" + "---|" * 12,
    ]
    for path in sorted(out.glob("*.json")):
        data = json.loads(path.read_text())
        base = next((r["seconds_per_problem"] for r in data["rows"] if r["search"] == "self-consistency"), None)
        for r in data["rows"]:
            ratio = f"{r['seconds_per_problem'] / base:.2f}x" if base else "-"  # no self-consistency in this run
            lines.append(
                f"| {path.stem} | {r['search']}@{r['n']} | {r['seconds_per_problem']} | {ratio} | "
                f"{r['tokens_per_problem']} | {r['tok_per_s']} | {r['prompt_tokens_per_problem']} / {r['encoded_tokens_per_problem']} "
                f"({r['encoded_share']}) | {r['mean_busy_rows']} ({r.get('mean_busy_rows_queued') or '-'}) of {r['rows']} | {pending_rows(r)} | {in_flight(r)} | {r['first_problem_s']} | "
                f"{r['accuracy']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", choices=sorted(ARMS))
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--searches", default=",".join(SEARCHES))
    parser.add_argument("--backend", default="vllm")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--table", action="store_true", help="print the table of every arm in --out")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/step_cost"))
    args = parser.parse_args()
    if args.table:
        print(table(args.out))
        return
    if args.arm is None:
        parser.error("--arm is required (or --table)")
    arm = ARMS[args.arm]
    base = Config(
        backend=args.backend,
        model=args.model,
        temperature=0.8,
        seed=0,
        step_tokens=64,
        max_tokens=args.max_tokens,
        splitter="step",
        options=arm["backend"],
    )
    dataset = get_registry().create("dataset", "gsm8k", base)
    tasks = list(dataset.load())[: args.problems]
    rows = []
    with Runtime(base) as runtime:
        start = time.perf_counter()
        runtime.backend.load()
        load = round(time.perf_counter() - start, 1)
        for search in args.searches.split(","):
            row = run_search(runtime, tasks, search, args.n, arm, dataset)
            print(json.dumps({k: v for k, v in row.items() if k != "answers"}), flush=True)
            rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "arm": args.arm, "settings": arm, "load_s": load}
    (args.out / f"{args.arm}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(table(args.out))


if __name__ == "__main__":
    main()
