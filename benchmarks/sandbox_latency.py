"""How fast is the Docker sandbox? (issues 5 and 27)

Runs a trivial program (``print(1)``) in one process, three ways:

- cold: a fresh container per run, created, started, run and removed on the critical path;
- warm pool: a fresh container per run, started ahead of need and removed in the
  background; measured with a ready container waiting (the steady state);
- reuse (the ``sandbox`` verifier's default): warm containers whose supervisor runs one
  program after another and resets the container between them (``Sandbox(reuse=True)``).

Reports p50 and p95 latency of sequential runs, and runs per second with ``run_many`` at
the same concurrency; ``--out DIR`` also writes ``DIR/sandbox.json``.

    .venv/bin/python benchmarks/sandbox_latency.py [--runs 40] [--workers 4] [--batch 48] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from reason.sandboxes import Sandbox
from reason.sandboxes.engine import connect
from reason.sandboxes.image import require_image

TRIVIAL = "print(1)"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "runs": len(latencies),
        "p50_ms": round(1000 * percentile(latencies, 50), 1),
        "p95_ms": round(1000 * percentile(latencies, 95), 1),
        "mean_ms": round(1000 * statistics.fmean(latencies), 1),
    }


def sequential(sandbox: Sandbox, runs: int) -> list[float]:
    latencies = []
    for _ in range(runs):
        if sandbox.pool is not None:
            sandbox.pool.wait_ready(60)
        start = time.perf_counter()
        result = sandbox.run(TRIVIAL)
        latencies.append(time.perf_counter() - start)
        assert result.ok and result.stdout == "1\n", result
    return latencies


def throughput(sandbox: Sandbox, batch: int, workers: int) -> float:
    if sandbox.pool is not None:
        sandbox.pool.wait_ready(60)
    start = time.perf_counter()
    results = sandbox.run_many([TRIVIAL] * batch, max_workers=workers)
    elapsed = time.perf_counter() - start
    assert all(r.ok for r in results)
    return batch / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="sequential runs per mode")
    parser.add_argument("--workers", type=int, default=4, help="concurrency of the throughput test")
    parser.add_argument("--batch", type=int, default=48, help="programs in the throughput test")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--out", type=Path, help="also write the report to OUT/sandbox.json")
    args = parser.parse_args()

    client = connect()
    report: dict[str, Any] = {
        "program": TRIVIAL,
        "engine": client.version().get("Version"),
        "image": require_image(client),
        "command": "benchmarks/sandbox_latency.py " + " ".join(sys.argv[1:]),
    }
    modes = {
        "cold": dict(pool_size=0),
        "warm_pool": dict(pool_size=args.workers),
        "reuse": dict(pool_size=args.workers, reuse=True),
    }
    for mode, settings in modes.items():
        with Sandbox(client=client, max_workers=args.workers, **settings) as sandbox:
            sandbox.run(TRIVIAL)  # the engine's caches, and for reuse a first worker
            report[mode] = summary(sequential(sandbox, args.runs))
            report[mode]["runs_per_s"] = round(throughput(sandbox, args.batch, args.workers), 2)
    report["workers"] = args.workers
    report["batch"] = args.batch

    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sandbox.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"trivial program {TRIVIAL!r}, Docker {report['engine']}, {args.runs} sequential runs per mode")
    print(f"{'mode':<12}{'p50 ms':>9}{'p95 ms':>9}{'runs/s':>9}")
    for mode in modes:
        row = report[mode]
        print(f"{mode:<12}{row['p50_ms']:>9.1f}{row['p95_ms']:>9.1f}{row['runs_per_s']:>9.2f}")
    print(f"runs/s: run_many of {args.batch} programs, {args.workers} at a time")


if __name__ == "__main__":
    main()
