"""Does the engine stay full? Continuous batching against lockstep calls (issue 11).

In ONE process, on ONE backend (the embedded model, transformers), alternating:

- raw: ``backend.generate`` of ``max_batch`` sampled sequences, each run to the token cap
  the searches use: the engine's own decode speed, the baseline of every ratio;
- best-of-n and beam over the first PROBLEMS MultiArith problems, ``solve_many`` with
  ``--concurrency`` searches in flight, twice each: *continuous* (requests go to the
  engine as searches make them) and *lockstep* (``-o continuous=false``: the runtime
  sends the engine whole calls, and a call lasts as long as its longest sequence, which
  is how the runtime worked before);
- eval: ``reason eval --limit EVAL --concurrency 8`` as a subprocess, watching when
  each problem lands in results.jsonl (continuous only).

Reported per run: generated tokens/s and its ratio to raw, the mean decode batch (all
steps, and steps while sequences were waiting for a row), prompt tokens encoded vs
requested (prefix reuse), wall time. Writes ``OUT/results.json`` and ``OUT/table.md``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/continuous.py --out benchmarks/results/continuous
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from reason import Config, GenerateRequest, Runtime, get_registry
from reason.prompts import messages_for


def problems(count: int) -> list[Any]:
    dataset = get_registry().create("dataset", "multiarith", Config())
    return list(dataset.load())[:count]


def engine_counters(backend: Any) -> dict[str, float]:
    stats = backend.stats
    return {
        "decode_tokens": stats.decode_tokens,
        "decode_steps": stats.decode_steps,
        "decode_rows": stats.decode_rows,
        "waiting_steps": stats.waiting_steps,
        "waiting_rows": stats.waiting_rows,
        "prefill_tokens": stats.prefill_tokens,
        "reused_tokens": stats.reused_tokens,
    }


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before[key] for key in after}


def summarize(name: str, counters: dict[str, float], seconds: float, max_batch: int, extra: dict[str, Any]) -> dict[str, Any]:
    requested = counters["prefill_tokens"] + counters["reused_tokens"]
    return {
        "run": name,
        "seconds": round(seconds, 1),
        "generated_tokens": int(counters["decode_tokens"]),
        "tok_per_s": round(counters["decode_tokens"] / seconds, 1),
        "mean_batch": round(counters["decode_rows"] / max(1, counters["decode_steps"]), 2),
        "mean_batch_when_waiting": round(counters["waiting_rows"] / counters["waiting_steps"], 2) if counters["waiting_steps"] else None,
        "max_batch": max_batch,
        "prompt_tokens_encoded": int(counters["prefill_tokens"]),
        "prompt_tokens_requested": int(requested),
        **extra,
    }


def run_raw(backend: Any, tasks: list[Any], max_tokens: int, seed: int) -> dict[str, Any]:
    """max_batch sampled sequences (one per problem prompt, cycling), each to max_tokens:
    every row decodes the whole time, so this is the engine's full-batch speed."""
    prompts = [backend.format_prompt(messages_for(t)) for t in tasks]
    requests = [
        GenerateRequest(prompts[i % len(prompts)], Config(max_tokens=max_tokens).sampling(seed=seed + i, stop=()), n=1)
        for i in range(backend.max_batch)
    ]
    before, start = engine_counters(backend), time.perf_counter()
    backend.generate(requests)
    return summarize("raw generate", delta(engine_counters(backend), before), time.perf_counter() - start, backend.max_batch, {})


def run_search(backend: Any, tasks: list[Any], search: str, n: int, continuous: bool, args: argparse.Namespace) -> dict[str, Any]:
    backend._continuous = continuous  # the same loaded model either way
    config = Config(search=search, n=n, max_tokens=args.max_tokens, seed=args.seed)
    finished: list[float] = []
    with Runtime(config, backend=backend) as runtime:
        before, start = engine_counters(backend), time.perf_counter()
        solutions = runtime.solve_many(tasks, concurrency=args.concurrency, on_solution=lambda s: finished.append(time.perf_counter()))
        seconds = time.perf_counter() - start
    backend._continuous = True
    correct = sum(1 for s in solutions if s.answer is not None and s.task.reference is not None and _same(s.answer, s.task.reference))
    return summarize(
        f"{search} N={n} {'continuous' if continuous else 'lockstep'}",
        delta(engine_counters(backend), before),
        seconds,
        backend.max_batch,
        {
            "first_problem_s": round(finished[0] - start, 1),
            "median_problem_s": round(sorted(finished)[len(finished) // 2] - start, 1),
            "correct": f"{correct}/{len(tasks)}",
        },
    )


def _same(answer: str, reference: str) -> bool:
    from reason.answers import is_equivalent

    return is_equivalent(answer, reference)


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    """``reason eval`` as a user runs it; when does each problem land in results.jsonl?"""
    out = Path(tempfile.mkdtemp(prefix="bench-eval-")) / "run"
    reason = Path(sys.executable).with_name("reason")
    command = [
        str(reason), "eval", "--dataset", "multiarith", "--limit", str(args.eval_limit), "--concurrency", "8",
        "--search", "best-of-n", "--n", "4", "--max-tokens", str(args.max_tokens), "--seed", str(args.seed),
        "--out", str(out), "-o", f"threads={args.threads}",
    ]
    landed: list[float] = []
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    results = out / "results.jsonl"

    def watch() -> None:
        seen = 0
        while process.poll() is None or seen < args.eval_limit:
            lines = results.read_text().count("\n") if results.exists() else 0
            landed.extend([time.perf_counter() - start] * (lines - seen))
            seen = lines
            if process.poll() is not None and lines == seen:
                break
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    _, stderr = process.communicate()
    watcher.join()
    total = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"reason eval failed ({process.returncode}): {stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "run": f"reason eval --limit {args.eval_limit} --concurrency 8 (best-of-n N=4)",
        "seconds": round(total, 1),
        "problems": len(landed),
        "first_problem_s": round(landed[0], 1) if landed else None,
        "first_problem_fraction_of_run": round(landed[0] / total, 3) if landed else None,
        "landing_times_s": [round(t, 1) for t in landed],
        "command": " ".join(command[1:]),
        "accuracy": summary.get("accuracy"),
    }


def table(rows: list[dict[str, Any]], raw_speed: float) -> str:
    head = "| run | tok/s | vs raw | mean batch | mean batch while waiting | prompt tokens encoded / requested | first problem done (s) | wall (s) |"
    lines = [head, "|" + "---|" * 8]
    for row in rows:
        if "tok_per_s" not in row:
            continue
        ratio = row["tok_per_s"] / raw_speed if raw_speed else 0
        waiting = row["mean_batch_when_waiting"]
        lines.append(
            f"| {row['run']} | {row['tok_per_s']} | {ratio:.2f} | {row['mean_batch']} of {row['max_batch']} | "
            f"{waiting if waiting is not None else '-'} | {row['prompt_tokens_encoded']} / {row['prompt_tokens_requested']} | "
            f"{row.get('first_problem_s', '-')} | {row['seconds']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--eval-limit", type=int, default=32, help="0 skips the eval run")
    parser.add_argument("--searches", default="best-of-n,beam")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/continuous"))
    args = parser.parse_args()

    from reason.plugins.backends.transformers import TransformersBackend

    backend = TransformersBackend(Config(options={"max_batch": args.max_batch, "threads": args.threads}))
    backend.load()
    tasks = problems(args.problems)
    backend.generate([GenerateRequest(backend.format_prompt(messages_for(tasks[0])), Config(max_tokens=4).sampling())])

    rows: list[dict[str, Any]] = []
    raws: list[float] = []

    def raw() -> None:
        row = run_raw(backend, tasks, args.max_tokens, args.seed)
        raws.append(row["tok_per_s"])
        rows.append(row)
        print(json.dumps(row), flush=True)

    raw()
    for search in args.searches.split(","):
        for continuous in (True, False):
            row = run_search(backend, tasks, search, args.n, continuous, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
        raw()  # raw speed measured between runs: the machine's load drifts
    if args.eval_limit:
        row = run_eval(args)
        rows.append(row)
        print(json.dumps(row), flush=True)

    raw_speed = sum(raws) / len(raws)
    for row in rows:
        if "tok_per_s" in row:
            row["vs_raw"] = round(row["tok_per_s"] / raw_speed, 3)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(sys.argv), "raw_tok_per_s_mean": raw_speed, "args": {k: str(v) for k, v in vars(args).items()}}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    text = table(rows, raw_speed)
    (args.out / "table.md").write_text(f"`{meta['command']}`\n\n{text}")
    print(text)
    backend.close()


if __name__ == "__main__":
    main()
