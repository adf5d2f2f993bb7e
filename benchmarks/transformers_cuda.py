"""The transformers backend on a CUDA GPU against plain ``model.generate``, same process.

Samples ``--tokens`` tokens for 1, 16 and 64 rows of one prompt, first through the
backend's decode loop, then through ``model.generate`` with ``min_new_tokens`` (the
baseline: no stop strings, logprobs or per-row seeds), and prints tokens/s, ms per decode
step and a cProfile of the backend at 64 rows (where its per-step time goes).

    REASON_MODEL=smollm2 python benchmarks/transformers_cuda.py

Runs on CPU too, but is meant for a GPU: results in ``benchmarks/results/cuda/``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

from reason import Config, GenerateRequest, SamplingParams
from reason.plugins.backends.transformers import TransformersBackend

QUESTION = "A farmer has 17 rows of 23 apple trees. How many trees? Think step by step."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=96)
    args = parser.parse_args()

    backend = TransformersBackend(Config())
    backend.load()
    print("device", backend.device, "dtype", backend.model.dtype, "max_batch", backend.max_batch, flush=True)
    prompt = backend.format_prompt([{"role": "user", "content": QUESTION}])
    ids = torch.tensor([backend.encode(prompt)], device=backend.device)

    def through_backend(rows: int) -> int:
        params = SamplingParams(temperature=0.8, max_tokens=args.tokens, seed=1)
        out = backend.generate([GenerateRequest(prompt, params, n=rows)])[0]
        return sum(len(c.token_ids) for c in out)

    def raw(rows: int) -> int:
        backend.model.generate(
            ids.repeat(rows, 1), max_new_tokens=args.tokens, min_new_tokens=args.tokens,
            do_sample=True, temperature=0.8, pad_token_id=0,
        )
        if backend.device.type == "cuda":
            torch.cuda.synchronize()
        return rows * args.tokens

    through_backend(4), raw(4)  # warm-up: kernels, allocator
    for rows in (1, 16, 64):
        for name, run in (("backend", through_backend), ("raw-hf", raw)):
            start = time.perf_counter()
            tokens = run(rows)
            seconds = time.perf_counter() - start
            print(f"{name:8s} rows={rows:3d} tokens={tokens:6d} {seconds:6.2f}s"
                  f" {tokens / seconds:8.1f} tok/s {seconds / args.tokens * 1000:6.1f} ms/step", flush=True)
    profile = cProfile.Profile()
    profile.enable()
    through_backend(64)
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
