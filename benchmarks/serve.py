"""What does serving cost? ``reason serve`` against the same work in-process (issue 12).

One run, on the embedded model (transformers), alternating ROUNDS times so that a
drifting machine load hits both sides alike:

- server: a ``reason serve`` subprocess on 127.0.0.1; PROBLEMS MultiArith questions sent
  at once as best-of-n chat requests with the official ``openai`` client (async);
- in-process: ``Runtime.solve_many`` on the same questions, same strategy, same seed,
  with the same number of searches in flight.

Both sides do the same work (seeded samples: the generated-token totals are reported
and should match); the throughput ratio is in-process seconds / server seconds (1.0 =
serving costs nothing; the issue's goal is >= 0.85).

Then greedy time-to-first-token, one request at a time, REPEATS times each, median:
through the server (streamed chat request, first content delta), through the runtime
in-process (``Runtime.stream(tokens=True)``, first ``TextGenerated``), and from the
engine directly (``backend.submit(..., on_text=...)``, first callback).

Writes ``OUT/results.json`` (with the command line) and ``OUT/table.md``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve.py --out benchmarks/results/serve
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from reason import Config, GenerateRequest, Runtime, SamplingParams, get_registry
from reason.prompts import messages_for

ROOT = Path(__file__).resolve().parent.parent


def problems(count: int) -> list[Any]:
    dataset = get_registry().create("dataset", "multiarith", Config())
    return list(dataset.load())[:count]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``reason serve SERVE_ARGS`` in a subprocess on a free port of 127.0.0.1, waited for
    until /health answers, stopped with SIGINT (``benchmarks/serve_load.py`` uses it too)."""

    def __init__(self, serve_args: list[str], log: Path | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w+") if log else tempfile.NamedTemporaryFile("w+", prefix="reason-serve-", suffix=".log", delete=False)
        command = [
            sys.executable, "-c", "from reason.cli import main; main()", "serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log", *serve_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        deadline = time.time() + 600
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"reason serve exited: {Path(self.log.name).read_text()}")
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                self.stop()
                raise SystemExit("reason serve did not start")
            time.sleep(0.5)

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.base}/health", timeout=10).json()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


async def server_batch(server: Server, questions: list[str], args: argparse.Namespace) -> dict[str, Any]:
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0, timeout=3600) as client:
        start = time.perf_counter()
        responses = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model="best-of-n", messages=[{"role": "user", "content": q}], seed=args.seed
                )
                for q in questions
            )
        )
        seconds = time.perf_counter() - start
    tokens = sum(r.usage.completion_tokens for r in responses)
    return {"seconds": round(seconds, 2), "generated_tokens": tokens, "tok_per_s": round(tokens / seconds, 1)}


def inprocess_batch(rt: Runtime, tasks: list[Any]) -> dict[str, Any]:
    start = time.perf_counter()
    solutions = rt.solve_many(tasks, concurrency=len(tasks))
    seconds = time.perf_counter() - start
    tokens = sum(s.usage.completion_tokens for s in solutions)
    return {"seconds": round(seconds, 2), "generated_tokens": tokens, "tok_per_s": round(tokens / seconds, 1)}


def ttft_server(server: Server, question: str, max_tokens: int) -> float:
    from openai import OpenAI

    with OpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0, timeout=600) as client:
        start = time.perf_counter()
        stream = client.chat.completions.create(
            model="greedy", messages=[{"role": "user", "content": question}], stream=True, max_tokens=max_tokens
        )
        first = None
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - start
        assert first is not None, "no content streamed"
        return first


def ttft_runtime(rt: Runtime, task: Any, max_tokens: int) -> float:
    async def go() -> float:
        start = time.perf_counter()
        first = None
        async for event in rt.stream(task, tokens=True, search="greedy", max_tokens=max_tokens):
            if first is None and event.kind == "TextGenerated" and event.text:
                first = time.perf_counter() - start
        assert first is not None, "no TextGenerated event"
        return first

    return asyncio.run(go())


def ttft_engine(rt: Runtime, task: Any, max_tokens: int) -> float:
    backend = rt.backend
    prompt = backend.format_prompt(messages_for(task, rt.config.system_prompt))
    first: list[float] = []
    seen = threading.Event()

    def on_text(sample: int, text: str) -> None:
        if not first and text:
            first.append(time.perf_counter() - start)
            seen.set()

    start = time.perf_counter()
    future = backend.submit(GenerateRequest(prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens)), on_text=on_text)
    future.result(timeout=600)
    assert first, "no text callback"
    return first[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--n", type=int, default=4, help="best-of-n samples per request")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="greedy time-to-first-token samples per way")
    parser.add_argument("--ttft-tokens", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve")
    args = parser.parse_args()

    tasks = problems(args.problems)
    questions = [t.question for t in tasks]
    config = Config(
        search="best-of-n",
        n=args.n,
        max_tokens=args.max_tokens,
        seed=args.seed,
        options={"threads": args.threads, "max_batch": args.max_batch},
    )
    load_before = os.getloadavg()
    server = Server(["--search", "best-of-n", "--n", str(args.n), "--max-tokens", str(args.max_tokens), "--seed", str(args.seed),
                     "-o", f"threads={args.threads}", "-o", f"max_batch={args.max_batch}"])  # fmt: skip
    rt = Runtime(config)
    rounds: list[dict[str, Any]] = []
    ttft: dict[str, list[float]] = {"server": [], "runtime": [], "engine": []}
    try:
        rt.backend.load()
        rt.solve(tasks[0].question)  # warm both sides: first forward passes, allocator
        asyncio.run(server_batch(server, questions[:1], args))
        for r in range(args.rounds):
            served = asyncio.run(server_batch(server, questions, args))
            local = inprocess_batch(rt, tasks)
            ratio = round(local["seconds"] / served["seconds"], 3)
            rounds.append({"round": r, "server": served, "in_process": local, "throughput_ratio": ratio})
            print(json.dumps(rounds[-1]), flush=True)
        for i in range(args.repeats):
            task = tasks[i % len(tasks)]
            ttft["server"].append(ttft_server(server, task.question, args.ttft_tokens))
            ttft["runtime"].append(ttft_runtime(rt, task, args.ttft_tokens))
            ttft["engine"].append(ttft_engine(rt, task, args.ttft_tokens))
        server_health = server.health()
    finally:
        rt.close()
        server.stop()
    ratios = [r["throughput_ratio"] for r in rounds]
    medians = {way: round(statistics.median(v) * 1000, 1) for way, v in ttft.items()}
    results = {
        "command": " ".join(
            [f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"] * ("OMP_NUM_THREADS" in os.environ)
            + [os.path.relpath(sys.executable, ROOT), *sys.argv]
        ),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "rounds": rounds,
        "throughput_ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        "ttft_ms": {
            "median": medians,
            "samples": {way: [round(v * 1000, 1) for v in values] for way, values in ttft.items()},
            "server_minus_engine_ms": round(medians["server"] - medians["engine"], 1),
        },
        "server_engine_stats": server_health["engine"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [
        f"`{results['command']}`",
        "",
        f"{args.problems} best-of-n (n={args.n}, max_tokens={args.max_tokens}) requests, all in flight; "
        f"{os.cpu_count()} CPUs, load {load_before[0]:.1f} before.",
        "",
        "| round | server s | in-process s | server tok | in-process tok | ratio (in-process s / server s) |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {r['round']} | {r['server']['seconds']} | {r['in_process']['seconds']} | {r['server']['generated_tokens']} "
            f"| {r['in_process']['generated_tokens']} | {r['throughput_ratio']} |"
            for r in rounds
        ),
        "",
        f"Greedy time to first token, median of {args.repeats} (ms): server {medians['server']}, "
        f"runtime in-process {medians['runtime']}, engine directly {medians['engine']}.",
    ]
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print(json.dumps({"throughput_ratio": results["throughput_ratio"], "ttft_ms": medians}))


if __name__ == "__main__":
    main()
