"""PRM throughput and prefix-cache hit rate during a PRM beam search.

Runs ``--search beam`` (N=8, M=4 by default) with the ``prm`` verifier on one MultiArith
problem and reports how many step scores the verifier returned per second of verifier
time, how many it actually computed, the prefix-cache hit rate, and how many tokens ran
through the PRM versus were reused from its KV cache. With ``--compare`` the same search
runs again with both caches off (``prm_cache_size=0``, ``prm_kv_cache_tokens=0``); the
seed fixes the policy's samples, and the scores agree either way (up to float rounding),
so both runs build the same tree.

    python benchmarks/prm_throughput.py                       # embedded SmolLM2 as policy and "PRM"
    python benchmarks/prm_throughput.py --compare
    python benchmarks/prm_throughput.py --prm-model /models/Qwen2.5-Math-PRM-7B --prm-format qwen --device cuda

Prints one JSON object per run (stdout).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from reason import Config, Runtime, Task
from reason.events import Event, VerifierCalled
from reason.log import configure as configure_logs

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "multiarith" / "test.jsonl"


def load_problem(path: Path, index: int) -> Task:
    with path.open() as handle:
        for i, line in enumerate(handle):
            if i == index:
                row = json.loads(line)
                return Task(question=row["input"], id=f"multiarith-{i}", reference=str(row["target"]))
    raise SystemExit(f"{path} has no problem {index}")


def run(args: argparse.Namespace, task: Task, use_caches: bool) -> dict:
    prm = {"format": args.prm_format, "batch_size": args.prm_batch_size}
    if args.prm_model:
        prm["model"] = args.prm_model
    if not use_caches:
        prm.update(cache_size=0, kv_cache_tokens=0)
    options = {"prm": prm, "beam": {"width": args.beam_width, "max_steps": args.max_steps}}
    config = Config(
        search="beam",
        verifier="prm",
        n=args.n,
        max_tokens=args.max_tokens,
        step_tokens=args.step_tokens,
        seed=args.seed,
        device=args.device,
        model=args.model,
        options=options,
    )
    calls: list[VerifierCalled] = []

    def listen(event: Event) -> None:
        if isinstance(event, VerifierCalled):
            calls.append(event)

    with Runtime(config) as runtime:
        runtime.subscribe(listen)
        runtime.solve(Task(question="warm-up: 1 + 1?"), n=2, options={"beam": {"max_steps": 1, "width": 2}})  # load both models
        prm = runtime.verifier(runtime.config)
        before = prm.stats.to_dict()
        calls.clear()
        start = time.perf_counter()
        solution = runtime.solve(task)
        wall = time.perf_counter() - start
        after = prm.stats
    steps = after.steps - before["steps"]
    cached = after.cached - before["cached"]
    computed = after.computed - before["computed"]
    seconds = after.seconds - before["seconds"]
    return {
        "problem": task.id,
        "caches": "on" if use_caches else "off",
        "n": args.n,
        "beam_width": args.beam_width,
        "rounds": solution.meta.get("rounds"),
        "verifier_calls": len(calls),
        "paths_scored": sum(c.paths for c in calls),
        "steps_scored": steps,
        "steps_computed": computed,
        "steps_cached": cached,
        "cache_hit_rate": round(cached / steps, 4) if steps else 0.0,
        "prm_tokens_run": after.tokens - before["tokens"],
        "prm_tokens_reused": after.reused - before["reused_tokens"],
        "verifier_seconds": round(seconds, 3),
        "steps_scored_per_second": round(steps / seconds, 2) if seconds else None,
        "steps_computed_per_second": round(computed / seconds, 2) if seconds else None,
        "search_seconds": round(wall, 3),
        "answer": solution.answer,
        "reference": task.reference,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--index", type=int, default=0, help="which MultiArith problem [0]")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--beam-width", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--step-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="policy model [embedded SmolLM2]")
    parser.add_argument("--device", default=None)
    parser.add_argument("--prm-model", default=None, help="PRM [embedded SmolLM2, generic format]")
    parser.add_argument("--prm-format", default="generic")
    parser.add_argument("--prm-batch-size", type=int, default=8)
    parser.add_argument("--compare", action="store_true", help="run again with the score and KV caches off")
    args = parser.parse_args()
    task = load_problem(args.data, args.index)
    configure_logs("warning")
    print(json.dumps(run(args, task, True)), flush=True)
    if args.compare:
        print(json.dumps(run(args, task, False)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
