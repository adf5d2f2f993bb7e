"""What does the runtime cost on top of the model? (issue 2's closing note)

Times `reason solve`'s path (Runtime.solve, best-of-n N=8, confidence verifier) on a
GSM8K question against raw `backend.generate` of the same request (same prompt, same
params, same seed, same batch size of 8) in the same process, alternating, and reports
medians and the ratio.

    .venv/bin/python benchmarks/solve_overhead.py [--repeats 3] [--max-tokens 256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from reason import Config, GenerateRequest, Runtime
from reason.prompts import messages_for
from reason.types import Task

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--n", type=int, default=8)
    args = parser.parse_args()

    question = json.loads(DATA.read_text().splitlines()[0])["question"]
    config = Config(search="best-of-n", n=args.n, max_tokens=args.max_tokens, seed=1234)
    runtime = Runtime(config)
    backend = runtime.backend
    task = Task(question=question, id="gsm8k/0")
    prompt = backend.format_prompt(messages_for(task))
    request = GenerateRequest(prompt=prompt, params=config.sampling(), n=args.n)
    backend.generate([GenerateRequest(prompt=prompt, params=config.sampling(max_tokens=4), n=1)])  # warm-up

    solve_times, raw_times, tokens = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        solution = runtime.solve(task)
        solve_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        completions = backend.generate([request])[0]
        raw_times.append(time.perf_counter() - start)
        tokens.append((solution.usage.completion_tokens, sum(c.num_tokens for c in completions)))
    solve_s, raw_s = statistics.median(solve_times), statistics.median(raw_times)
    print(json.dumps({
        "question": "gsm8k/0", "n": args.n, "max_tokens": args.max_tokens, "repeats": args.repeats,
        "tokens (solve, raw) per repeat": tokens,
        "solve_s_median": round(solve_s, 3), "raw_generate_s_median": round(raw_s, 3),
        "ratio_solve_over_raw": round(solve_s / raw_s, 3),
        "solve_s_all": [round(t, 3) for t in solve_times], "raw_s_all": [round(t, 3) for t in raw_times],
    }, indent=1))
    runtime.close()


if __name__ == "__main__":
    main()
