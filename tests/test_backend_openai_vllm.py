"""The ``openai`` backend against a real vLLM OpenAI-compatible server (``-m vllm``).

The server is vLLM's own (``python -m vllm.entrypoints.openai.api_server``, the same
server as ``vllm serve``), on 127.0.0.1 with the embedded SmolLM2, started once for the
module: on a machine without a GPU that is vLLM's CPU build, which `make test` installs.
These tests check what the llama.cpp server tests cannot: ``n`` served by the server
itself, token ids and the matched stop string reported by vLLM, ``seed``, usage against
the server's own counters, and the server killed mid-run (the last test: it takes the
module's server down).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import httpx
import pytest

from vllm_server import SERVED_NAME, VLLMServer, require_vllm

from reason import BackendError, Config, GenerateRequest, Runtime, SamplingParams
from reason.plugins.backends.openai import OpenAIBackend

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def server():
    require_vllm()
    start = time.monotonic()
    served = VLLMServer().start()
    print(f"\nvLLM server up in {time.monotonic() - start:.1f}s")
    yield served
    served.stop()


def options(server: VLLMServer, **extra) -> dict:
    return {"base_url": server.base_url, "tokenizer": server.model_dir, "max_retries": 1, "retry_backoff": 0.1, **extra}


def backend(server: VLLMServer, **extra) -> OpenAIBackend:
    return OpenAIBackend(Config(backend="openai", model=SERVED_NAME, options=options(server, **extra)))


def counters(server: VLLMServer) -> dict[str, float]:
    """vLLM's Prometheus totals of prompt and generated tokens."""
    text = httpx.get(server.base_url.removesuffix("/v1") + "/metrics", timeout=10).text
    totals = {}
    for name in ("prompt_tokens_total", "generation_tokens_total"):
        values = re.findall(rf"^vllm:{name}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M)
        totals[name] = sum(float(v) for v in values)
    return totals


def test_n_logprobs_stop_and_token_ids(server):
    b = backend(server)
    prompt = b.format_prompt([{"role": "user", "content": "Count from 1 to 20, one number per line."}])
    params = SamplingParams(temperature=0.8, max_tokens=40, stop=("\n",), logprobs=5, seed=3)
    (completions,) = b.generate([GenerateRequest(prompt=prompt, params=params, n=3)])
    assert len(completions) == 3
    assert b.model_name == SERVED_NAME
    own_count = len(b.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    for c in completions:
        assert c.finish_reason in ("stop", "eos", "length") and c.num_tokens >= 1
        if c.finish_reason == "stop":
            assert c.text.endswith("\n") and c.text.count("\n") == 1
        assert len(c.logprobs) == c.num_tokens == len(c.top_logprobs)
        assert all(len(top) == 5 and list(top) == sorted(top, reverse=True) for top in c.top_logprobs)
        assert all(lp <= 0.0 for lp in c.logprobs)
        assert b.tokenizer.decode(list(c.token_ids)).startswith(c.text)  # ids from the server
        assert c.prompt_tokens == own_count  # one BOS: the template's, none added by the server
    greedy = SamplingParams(temperature=0.0, max_tokens=40, stop=("\n",), logprobs=5)
    ((line,),) = b.generate([GenerateRequest(prompt=prompt, params=greedy)])
    assert line.finish_reason == "stop" and line.text.endswith("\n") and line.text.count("\n") == 1
    b.close()


def test_greedy_with_n_above_one(server):
    """vLLM's server refuses n > 1 with greedy sampling; the backend asks once."""
    b = backend(server)
    prompt = b.format_prompt([{"role": "user", "content": "Say hi."}])
    try:
        (same,) = b.generate([GenerateRequest(prompt=prompt, params=SamplingParams(temperature=0.0, max_tokens=8), n=2)])
    finally:
        b.close()
    assert len(same) == 2 and same[0].text == same[1].text


def test_greedy_sampled_token_is_the_top_choice(server):
    b = backend(server)
    prompt = b.format_prompt([{"role": "user", "content": "Say hi."}])
    (short,) = b.generate([GenerateRequest(prompt=prompt, params=SamplingParams(temperature=0.0, max_tokens=3, logprobs=2))])
    assert short[0].finish_reason == "length" and short[0].num_tokens == 3
    assert all(abs(lp - top[0]) < 1e-4 for lp, top in zip(short[0].logprobs, short[0].top_logprobs))
    (full,) = b.generate([GenerateRequest(prompt=prompt, params=SamplingParams(temperature=0.0, max_tokens=300, logprobs=1))])
    assert full[0].finish_reason == "eos" and full[0].num_tokens < 300
    b.close()


def test_seed_gives_the_same_samples_alone_and_among_other_requests(server):
    b = backend(server, max_concurrency=8)
    prompt = b.format_prompt([{"role": "user", "content": "Tell me a fact about numbers."}])
    seeded = GenerateRequest(prompt=prompt, params=SamplingParams(temperature=1.0, max_tokens=16, seed=11), n=2)
    (alone,) = b.generate([seeded])
    noise = [
        GenerateRequest(prompt=b.format_prompt([{"role": "user", "content": f"Describe the number {i}."}]),
                        params=SamplingParams(temperature=1.0, max_tokens=24), n=2)
        for i in range(4)
    ]
    crowded = b.generate([*noise[:2], seeded, *noise[2:]])[2]
    other = SamplingParams(temperature=1.0, max_tokens=16, seed=12)
    (different,) = b.generate([GenerateRequest(prompt=prompt, params=other, n=2)])
    texts = [c.text for c in alone]
    assert [c.text for c in crowded] == texts
    assert [c.text for c in different] != texts
    b.close()


def test_usage_matches_the_servers_own_counters(server):
    config = Config(
        backend="openai", model=SERVED_NAME, search="beam", n=2, max_tokens=48, step_tokens=24,
        temperature=0.8, seed=0, options={**options(server), "beam": {"width": 2, "max_steps": 2}},
    )
    before = counters(server)
    with Runtime(config) as rt:
        solution = rt.solve("What is 3 + 4?")
    after = counters(server)
    usage = solution.usage
    assert usage.model_calls >= 1 and usage.completion_tokens > 0 and usage.prompt_tokens > 0
    assert after["generation_tokens_total"] - before["generation_tokens_total"] == usage.completion_tokens
    assert after["prompt_tokens_total"] - before["prompt_tokens_total"] >= usage.prompt_tokens / config.n
    generated = [n.step for n in solution.tree.nodes if n.step is not None and not n.step.injected]
    assert generated and all(len(s.logprobs) == len(s.token_ids) for s in generated)


def test_cli_solve_through_the_vllm_server(server):
    args = ["solve", "--backend", "openai", "--base-url", server.base_url, "--model", SERVED_NAME,
            "--tokenizer", server.model_dir, "--search", "best-of-n", "--n", "3", "--max-tokens", "48",
            "--json", "What is 2 + 3?"]
    result = subprocess.run(
        [sys.executable, "-c", "from reason.cli import main; main()", *args],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout)
    assert data["usage"]["completion_tokens"] > 0 and data["usage"]["model_calls"] >= 1


@pytest.mark.timeout(300)
def test_server_killed_mid_run_gives_a_clear_error_and_no_hang(server):
    """Last in the module: it kills the module's server."""
    config = Config(
        backend="openai", model=SERVED_NAME, search="best-of-n", n=8, max_tokens=400, temperature=1.0,
        options=options(server, max_concurrency=2),
    )
    rt = Runtime(config)
    b = rt.backend
    b.format_prompt([{"role": "user", "content": "warm up"}])  # tokenizer loaded before the clock

    def killer():
        deadline = time.monotonic() + 120
        while b.http_requests < 2 and time.monotonic() < deadline:  # /models, then the n=8 completion
            time.sleep(0.05)
        time.sleep(1.5)  # 8 x 400 tokens take far longer than this
        server.kill()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    start = time.monotonic()
    with pytest.raises(BackendError) as info:
        rt.solve("Write a long story about a robot.")
    elapsed = time.monotonic() - start
    thread.join(timeout=30)
    rt.close()
    message = str(info.value)
    assert server.base_url in message and "--base-url" in message and "\n" not in message
    assert elapsed < 120
