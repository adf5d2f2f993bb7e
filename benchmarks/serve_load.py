"""A load run of ``reason serve`` as a gateway (issue 30): 64 concurrent clients for a
bounded time on the embedded model, below the server's limits and above them.

Two phases, each against a fresh ``reason serve`` subprocess on 127.0.0.1 (transformers,
greedy, MAX_TOKENS tokens a path) and each CLIENTS clients (the official ``openai``
async client, no retries) sending chat requests back to back for SECONDS seconds (a
request still running then is awaited, not counted twice):

- ``below``: the limits hold every client (``--limit-searches CLIENTS``): no error
  expected; latency p50/p95 and throughput;
- ``above``: 8 search slots and a queue of 8 for 64 clients: the rest are refused with
  429 and ``Retry-After`` at once, and every accepted request completes.

Writes ``OUT/results.json`` (with the command line) and ``OUT/table.md``.

    .venv/bin/python benchmarks/serve_load.py --out benchmarks/results/serve_load
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from serve import Server  # benchmarks/serve.py: runs as a script beside this one

QUESTIONS = [f"What is {a} + {b}? Answer with the number." for a in range(3, 20) for b in range(2, 6)]


@contextlib.contextmanager
def server(model: str, max_tokens: int, limits: list[str], log: Path) -> Iterator[str]:
    running = Server(["--model", model, "--search", "greedy", "--max-tokens", str(max_tokens), *limits], log)
    try:
        yield running.base
    finally:
        running.stop()


async def load(base: str, model: str, clients: int, seconds: float) -> dict[str, Any]:
    import openai

    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    tokens = 0
    stop_at = time.monotonic() + seconds

    async def client(c: openai.AsyncOpenAI, k: int) -> None:
        nonlocal tokens
        i = k
        while time.monotonic() < stop_at:
            start = time.monotonic()
            try:
                r = await c.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
                )
                latencies.append(time.monotonic() - start)
                tokens += r.usage.completion_tokens
                outcomes["200"] += 1
            except openai.APIStatusError as exc:
                outcomes[str(exc.status_code)] += 1
                if exc.status_code == 429:  # as a polite client would, but never past the end
                    wait = float(exc.response.headers.get("retry-after", "1"))
                    await asyncio.sleep(min(wait, max(0.0, stop_at - time.monotonic())))
            except openai.APIError as exc:
                outcomes[type(exc).__name__] += 1
            i += clients

    start = time.monotonic()
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=600) as c:
        await asyncio.gather(*(client(c, k) for k in range(clients)))
    wall = time.monotonic() - start
    q = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else [float("nan")] * 19
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "answered": outcomes["200"],
        "outcomes": dict(outcomes),
        "errors": sum(v for k, v in outcomes.items() if k not in ("200", "429")),
        "rejected_429": outcomes["429"],
        "latency_p50_s": round(statistics.median(latencies), 2) if latencies else None,
        "latency_p95_s": round(q[18], 2),
        "requests_per_s": round(outcomes["200"] / wall, 2),
        "generated_tokens_per_s": round(tokens / wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    phases = {
        "below": ["--limit-searches", str(args.clients), "--limit-queue", str(4 * args.clients)],
        "above": ["--limit-searches", "8", "--limit-queue", "8"],
    }
    rows = []
    for name, limits in phases.items():
        with server(args.model, args.max_tokens, limits, args.out / f"serve-{name}.log") as base:
            model = httpx.get(f"{base}/v1/models", timeout=10).json()["data"][0]["id"]
            row = {"phase": name, "limits": " ".join(limits), **asyncio.run(load(base, model, args.clients, args.seconds))}
            with contextlib.suppress(httpx.HTTPError):
                row["health_after"] = httpx.get(f"{base}/health", timeout=10).json()["status"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    (args.out / "results.json").write_text(json.dumps({"command": " ".join(sys.argv), "model": args.model,
                                                      "max_tokens": args.max_tokens, "rows": rows}, indent=2) + "\n")  # fmt: skip
    lines = ["| phase | limits | clients | s | answered | 429 | errors | p50 s | p95 s | req/s | tok/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['phase']} | `{r['limits']}` | {r['clients']} | {r['seconds']} | {r['answered']} | {r['rejected_429']} "
                     f"| {r['errors']} | {r['latency_p50_s']} | {r['latency_p95_s']} | {r['requests_per_s']} | {r['generated_tokens_per_s']} |")  # fmt: skip
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
