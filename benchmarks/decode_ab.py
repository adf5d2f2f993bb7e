"""Raw decode tok/s of the transformers backend (16 rows x 128 tokens, seeded), for an A/B of two trees
(benchmarks/results/continuous/decode-loop-object/README.md says how)."""

import json
import time

import reason
from reason import Config
from reason.plugins.backends.transformers import TransformersBackend
from reason.types import GenerateRequest

backend = TransformersBackend(Config(model="qwen2.5-coder-0.5b"))
backend.load()
prompt = backend.format_prompt([{"role": "user", "content": "Tom has 3 apples and buys 5 more. How many apples?"}])


def run(tokens):
    reqs = [GenerateRequest(prompt, Config(max_tokens=tokens).sampling(seed=i, stop=()), n=1) for i in range(16)]
    start = time.perf_counter()
    out = backend.generate(reqs)
    return sum(len(c[0].token_ids) for c in out) / (time.perf_counter() - start)


run(16)  # warm-up
print(json.dumps({"tree": reason.__file__, "tok_per_s": round(run(128), 2)}))
backend.close()
