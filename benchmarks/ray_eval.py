"""``reason eval --ray`` throughput: problems per minute with 1 and 2 Ray workers (and on
one machine without Ray, for reference), and the driver's overhead per problem (issue 14).

Each configuration evaluates the same MultiArith slice (best-of-n, seeded, the embedded
SmolLM2-135M) through :class:`reason.eval.run.EvalRun`, the path ``reason eval`` takes,
into a fresh directory. Reported per configuration:

- ``problems_per_minute``: problems / solving wall time, from every model loaded to the
  last problem written (the sum of the records' ``wall_seconds``);
- ``driver_cpu_ms_per_problem`` (Ray only): the driver process's CPU time per problem
  (receiving, grading and writing; the grading and writing cost the same on one machine);
- ``handoff_ms`` (Ray only): median and max time from a worker's solution being ready to
  the driver having graded and written it (:class:`reason.eval.distributed.PoolStats`).

A local Ray instance with ``--cpus`` CPUs is started in this process; each worker
reserves 1 CPU (Ray gives it ``OMP_NUM_THREADS=1``), so on a 2-core machine 2 workers
split the cores the one-machine run's torch threads share: expect little gain there.
``--threads N`` (``-o threads=N``, for every run and worker) takes torch's thread count
out of the comparison; on a busy machine the default spins (see the README's
``-o threads=1``), so run it on a quiet one (about 10 minutes on 2 cores with these
settings):

    .venv/bin/python benchmarks/ray_eval.py --problems 24 --n 4 --max-tokens 128 --workers 1,2 > ray_eval.json

``--problems 2 --n 2 --max-tokens 16`` checks that it works in about a minute.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from reason import Config, Runtime, get_registry
from reason.eval.distributed import RayPool
from reason.eval.run import EvalRun


def evaluate(config: Config, problems: int, out: Path, solver: Any, concurrency: int) -> dict[str, Any]:
    """One run of ``problems`` MultiArith problems on ``solver`` (a Runtime or a RayPool)."""
    dataset = get_registry().create("dataset", "multiarith", config)
    run = EvalRun(dataset_spec="multiarith", dataset=dataset, config=config, out=out, limit=problems,
                  concurrency=concurrency)
    try:
        todo = run.prepare()
        cpu = time.process_time()
        records = run.run(solver, todo)
        cpu = time.process_time() - cpu
    finally:
        dataset.close()
    wall = sum(r["wall_seconds"] for r in records)  # from the models loaded to the last record
    return {
        "problems": len(records),
        "seconds": round(wall, 2),
        "problems_per_minute": round(60 * len(records) / wall, 2),
        "driver_cpu_ms_per_problem": round(1000 * cpu / len(records), 1),
        "accuracy": round(sum(r["correct"] for r in records) / len(records), 3),
        "completion_tokens": sum(r["usage"]["completion_tokens"] for r in records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=24)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--workers", default="1,2", help="worker counts to time, comma-separated")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--concurrency", type=int, default=16, help="problems in flight per worker")
    parser.add_argument("--threads", type=int, help="torch threads of each run and worker [torch's default]")
    parser.add_argument("--no-local", action="store_true", help="skip the one-machine run without Ray")
    args = parser.parse_args()

    import ray

    options = {"threads": args.threads} if args.threads else {}
    config = Config(model="smollm2", search="best-of-n", n=args.n, max_tokens=args.max_tokens, seed=1234, options=options)
    report: dict[str, Any] = {"settings": vars(args), "runs": {}}
    ray.init(num_cpus=args.cpus, include_dashboard=False, object_store_memory=100 * 1024**2, logging_level="warning")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if not args.no_local:
                with Runtime(config) as runtime:
                    result = evaluate(config, args.problems, Path(tmp) / "local", runtime, args.concurrency)
                del result["driver_cpu_ms_per_problem"]  # the driver solved too: not an overhead
                report["runs"]["one machine"] = result
                print("one machine done", file=sys.stderr)
            for count in (int(w) for w in args.workers.split(",")):
                with RayPool(config, workers=count) as pool:
                    result = evaluate(config, args.problems, Path(tmp) / f"ray{count}", pool, args.concurrency)
                    handoff = pool.stats.handoff_seconds
                result["handoff_ms"] = {"median": round(1000 * statistics.median(handoff), 1),
                                        "max": round(1000 * max(handoff), 1)}
                report["runs"][f"ray, {count} worker(s)"] = result
                print(f"{count} worker(s) done", file=sys.stderr)
    finally:
        ray.shutdown()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
