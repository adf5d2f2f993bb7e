"""How fast is the Docker sandbox? (issue 5's closing note)

Runs a trivial program (``print(1)``) in one process, one run, three ways:

- cold: a fresh container per run, created, started, run and removed on the critical path;
- warm pool (what the sandbox uses): a fresh container started ahead of need, removed in
  the background; measured with a ready container waiting (the steady state);
- reuse (measured for comparison, not used): one long-lived container, the program run
  with ``exec`` and the state reset after each run (kill every process, wipe the
  writable mounts). It is the fast path a sandbox could take if it accepted that a reset
  must undo everything a hostile program can leave, which fresh containers never need.

Reports p50 and p95 latency of each, and runs per second with ``run_many`` (warm pool vs
cold) at the same concurrency.

    .venv/bin/python benchmarks/sandbox_latency.py [--runs 40] [--workers 4] [--batch 48] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from reason.sandboxes import Limits, Sandbox
from reason.sandboxes.container import container_spec, remove
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


def _exec(client: Any, container_id: str, cmd: list[str]) -> tuple[int, bytes]:
    exec_id = client.api.exec_create(container_id, cmd, stdout=True, stderr=True)["Id"]
    output = client.api.exec_start(exec_id)
    return client.api.exec_inspect(exec_id)["ExitCode"], output


def reuse_latencies(client: Any, image: str, runs: int) -> list[float]:
    """exec + reset in one long-lived container (PID 1 is a sleep that `kill -9 -1`
    spares, being init)."""
    spec = container_spec(client, image, Limits())
    spec.update(command=["sleep", "infinity"], stdin_open=False, detach=True)
    container_id = client.api.create_container(**spec)["Id"]
    reset = "kill -9 -1 2>/dev/null; find /sandbox /tmp /dev/shm -mindepth 1 -delete 2>/dev/null; true"
    try:
        client.api.start(container_id)
        latencies = []
        for _ in range(runs):
            start = time.perf_counter()
            code, output = _exec(client, container_id, ["python3", "-c", TRIVIAL])
            _exec(client, container_id, ["sh", "-c", reset])
            latencies.append(time.perf_counter() - start)
            assert code == 0 and output.strip() == b"1", output
        return latencies
    finally:
        remove(client, container_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="sequential runs per mode")
    parser.add_argument("--workers", type=int, default=4, help="concurrency of the throughput test")
    parser.add_argument("--batch", type=int, default=48, help="programs in the throughput test")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    client = connect()
    image = require_image(client)
    report: dict[str, Any] = {"program": TRIVIAL, "engine": client.version().get("Version")}

    with Sandbox(client=client, pool_size=0, max_workers=args.workers) as cold:
        cold.run(TRIVIAL)  # warm the engine's caches once
        report["cold"] = summary(sequential(cold, args.runs))
        report["cold"]["runs_per_s"] = round(throughput(cold, args.batch, args.workers), 2)
    with Sandbox(client=client, pool_size=args.workers, max_workers=args.workers) as warm:
        report["warm_pool"] = summary(sequential(warm, args.runs))
        report["warm_pool"]["runs_per_s"] = round(throughput(warm, args.batch, args.workers), 2)
        report["warm_pool"]["pool_size"] = args.workers
    report["reuse_exec_reset"] = summary(reuse_latencies(client, image, args.runs))
    report["workers"] = args.workers
    report["batch"] = args.batch

    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"trivial program {TRIVIAL!r}, Docker {report['engine']}, {args.runs} sequential runs per mode")
    print(f"{'mode':<22}{'p50 ms':>9}{'p95 ms':>9}{'runs/s':>9}")
    for mode in ("cold", "warm_pool", "reuse_exec_reset"):
        row = report[mode]
        rate = f"{row['runs_per_s']:.2f}" if "runs_per_s" in row else "-"
        print(f"{mode:<22}{row['p50_ms']:>9.1f}{row['p95_ms']:>9.1f}{rate:>9}")
    print(f"runs/s: run_many of {args.batch} programs, {args.workers} at a time")


if __name__ == "__main__":
    main()
