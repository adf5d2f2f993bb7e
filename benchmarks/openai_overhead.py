"""What does the ``openai`` backend cost on top of the server? (issue 7's closing note)

Sends the same batch of completion requests (GSM8K questions, chat template applied,
fixed seeds, so both sides generate the same tokens) to one OpenAI-compatible server
two ways, alternating, in one run:

- direct: the exact JSON bodies our backend sends, POSTed with a plain ``httpx`` client
  from a thread pool of the same size; tokens counted from the server's ``usage``;
- backend: ``OpenAIBackend.generate`` (retries, parsing, stop-string and logprob
  mapping, token ids); tokens counted from the completions it returns.

Reports completion tokens per second of each (median over repeats) and the ratio.

    .venv/bin/python benchmarks/openai_overhead.py                # starts llama.cpp's server
    .venv/bin/python benchmarks/openai_overhead.py --base-url http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from reason import Config, GenerateRequest, SamplingParams
from reason.plugins.backends.openai import OpenAIBackend
from reason.prompts import messages_for
from reason.types import Task

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def questions(count: int) -> list[str]:
    if DATA.is_file():
        return [json.loads(line)["question"] for line in DATA.read_text().splitlines()[:count]]
    return [f"What is {i} + {i * 3}? Explain step by step." for i in range(count)]


def direct(client: httpx.Client, payloads: list[dict], workers: int) -> int:
    def post(payload: dict) -> int:
        response = client.post("/completions", json=payload)
        response.raise_for_status()
        return int(response.json()["usage"]["completion_tokens"])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(post, payloads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="a running server; default: start llama.cpp's server with the embedded GGUF")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    server = None
    if args.base_url is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from llama_server import LlamaServer

        server = LlamaServer().start()
        args.base_url = server.base_url
    try:
        config = Config(
            backend="openai",
            options={"base_url": args.base_url, "max_concurrency": args.concurrency, "max_retries": 0},
        )
        backend = OpenAIBackend(config)
        params = [
            SamplingParams(temperature=0.8, max_tokens=args.max_tokens, seed=1000 + i, logprobs=5, stop=("\n\n",))
            for i in range(args.requests)
        ]
        prompts = [backend.format_prompt(messages_for(Task(question=q))) for q in questions(args.requests)]
        requests = [GenerateRequest(prompt=p, params=sp, n=1) for p, sp in zip(prompts, params)]
        backend.generate(requests[:1])  # warm-up: model check, id table, server caches
        payloads = [backend.payload(r, 1) for r in requests]
        client = httpx.Client(base_url=backend.base_url, timeout=300.0)
        direct(client, payloads[:1], 1)

        rows: dict[str, list[tuple[int, float]]] = {"direct": [], "backend": []}
        for _ in range(args.repeats):
            start = time.perf_counter()
            tokens = direct(client, payloads, args.concurrency)
            rows["direct"].append((tokens, time.perf_counter() - start))
            start = time.perf_counter()
            tokens = sum(c.num_tokens for cs in backend.generate(requests) for c in cs)
            rows["backend"].append((tokens, time.perf_counter() - start))
        client.close()
        backend.close()

        tps = {name: statistics.median(t / s for t, s in runs) for name, runs in rows.items()}
        print(json.dumps({
            "server": args.base_url, "model": backend.model_name, "requests": args.requests,
            "max_tokens": args.max_tokens, "concurrency": args.concurrency, "repeats": args.repeats,
            "tokens_per_repeat": {name: [t for t, _ in runs] for name, runs in rows.items()},
            "seconds": {name: [round(s, 3) for _, s in runs] for name, runs in rows.items()},
            "tokens_per_second_median": {name: round(v, 1) for name, v in tps.items()},
            "backend_over_direct": round(tps["backend"] / tps["direct"], 3),
        }, indent=1))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
