"""`reason serve` as a gateway: API keys, the deployer's limits (caps, a bounded queue of
searches, a deadline) and Prometheus /metrics.

The unit half runs the app in-process on the scripted backend, with a backend that holds
its calls until the test lets them go, so the queue's states are exact. The ``model``
half starts a real ``reason serve`` with keys and limits on the embedded model and talks
to it with the official ``openai`` client and raw httpx.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from scripted import ScriptedBackend
from serve_process import serving

from reason import Config

# -- helpers -------------------------------------------------------------------------


def make_client(backend=None, **kw):
    from starlette.testclient import TestClient

    from reason.plugins.serve.app import create_app

    return TestClient(create_app(Config(search="best-of-n", n=2), backend=backend or ScriptedBackend(), served_model_name="toy", **kw))


def chat(client, headers=None, **body):
    body.setdefault("model", "toy")
    body.setdefault("messages", [{"role": "user", "content": "What is 2 + 2?"}])
    return client.post("/v1/chat/completions", json=body, headers=headers or {})


def error_of(response, status):
    assert response.status_code == status, response.text
    return response.json()["error"]


def metrics(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus text page, keyed by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples
    }


class Gate(ScriptedBackend):
    """A scripted backend whose calls wait until the test opens the gate (at most 30 s)."""

    def __init__(self):
        super().__init__()
        self.open = threading.Event()
        self.entered = threading.Semaphore(0)

    def generate(self, requests):
        self.entered.release()
        self.open.wait(30)
        return super().generate(requests)


# -- API keys ------------------------------------------------------------------------


def test_api_keys_guard_every_route_but_health():
    from reason.plugins.serve.limits import Limits

    with make_client(api_keys=("sk-one", "sk-two"), limits=Limits()) as c:
        missing = error_of(chat(c), 401)
        assert missing["code"] == "invalid_api_key" and "Authorization: Bearer" in missing["message"]
        wrong = chat(c, headers={"Authorization": "Bearer sk-three"})
        assert error_of(wrong, 401)["code"] == "invalid_api_key" and wrong.headers["www-authenticate"].startswith("Bearer")
        assert error_of(chat(c, headers={"Authorization": "Basic sk-one"}), 401)["code"] == "invalid_api_key"
        assert error_of(chat(c, headers={"Authorization": "Bearer sk-one-more"}), 401)["code"] == "invalid_api_key"
        for key in ("sk-one", "sk-two"):
            assert chat(c, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        for path in ("/v1/models", "/metrics", "/docs", "/openapi.json", "/nowhere"):
            assert c.get(path).status_code == 401, path
        assert c.get("/metrics", headers={"Authorization": "Bearer sk-two"}).status_code == 200
        assert c.get("/health").status_code == 200  # open: load balancers ask without a key


def test_an_empty_key_is_refused_at_start():
    from reason.plugins.serve.auth import APIKeys

    with pytest.raises(ValueError, match="must not be empty"):
        APIKeys(None, ["sk-one", ""])


# -- caps ----------------------------------------------------------------------------


def test_requests_over_a_cap_are_400s_naming_the_field():
    from reason.plugins.serve.limits import Limits

    with make_client(limits=Limits(choices=2, width=4, tokens=100)) as c:
        over = error_of(chat(c, n=3), 400)
        assert (over["param"], over["code"]) == ("n", "limit_exceeded") and "at most 2" in over["message"]
        wide = error_of(chat(c, reason={"n": 8}), 400)
        assert wide["param"] == "reason.n" and "at most 4 paths" in wide["message"]
        long = error_of(chat(c, max_tokens=500), 400)
        assert long["param"] == "max_tokens" and "at most 100" in long["message"]
        prompts = c.post("/v1/completions", json={"model": "toy", "prompt": ["a?", "b?"], "n": 2})
        assert error_of(prompts, 400)["param"] == "prompt"  # 2 prompts x n=2 = 4 searches
        # at the caps, and with the server's own defaults, requests run
        assert chat(c, n=2, reason={"n": 4}, max_tokens=100).status_code == 200
        assert chat(c).status_code == 200


def test_a_request_larger_than_the_slots_can_never_run_so_it_is_a_400_not_a_wait():
    from reason.plugins.serve.limits import Limits

    with make_client(limits=Limits(searches=2)) as c:
        assert "at most 2 per request" in error_of(chat(c, n=3), 400)["message"]


# -- the queue -----------------------------------------------------------------------


def test_past_the_queue_a_request_gets_429_with_retry_after_and_every_accepted_one_completes():
    from reason.plugins.serve.limits import Limits

    gate = Gate()
    with make_client(gate, limits=Limits(searches=1, queue=1)) as c, ThreadPoolExecutor(2) as pool:
        running = pool.submit(chat, c)
        assert gate.entered.acquire(timeout=30)  # the first search is in the backend
        queued = pool.submit(chat, c)
        deadline = time.time() + 30
        while c.get("/health").json()["searches_queued"] != 1:
            assert time.time() < deadline, "the second request never queued"
            time.sleep(0.01)
        refused = chat(c)
        error = error_of(refused, 429)
        assert error["type"] == "rate_limit_error" and error["code"] == "server_busy"
        assert int(refused.headers["retry-after"]) >= 1
        gate.open.set()
        assert running.result(30).status_code == 200 and queued.result(30).status_code == 200
        health = c.get("/health").json()
        assert health["searches_queued"] == 0 and health["searches_in_flight"] == 0
        page = metrics(c.get("/metrics").text)
        assert page[("reason_requests_total", (("code", "429"), ("route", "/v1/chat/completions")))] == 1


def test_admission_is_first_come_first_served_and_a_cancelled_waiter_leaves_the_queue():
    from reason.plugins.serve.limits import Admission, Limits

    async def go():
        gate = Admission(Limits(searches=3, queue=10))
        order = []

        async def request(name, ticket):
            async with gate.hold(ticket):
                order.append(name)
                await asyncio.sleep(0.01)

        first = gate.reserve(2)
        assert first.granted and gate.running == 2
        big, small = gate.reserve(3), gate.reserve(1)  # small would fit, but big came first
        assert not big.granted and not small.granted and gate.queued == 4
        waiter = asyncio.create_task(request("leaving", gate.reserve(1)))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert gate.queued == 4
        await asyncio.gather(request("first", first), request("big", big), request("small", small))
        assert order == ["first", "big", "small"] and gate.running == 0 and not gate.waiting
        # a ticket dropped unused (a streamed response whose body never ran) gives its slots back
        dropped = gate.reserve(3)
        assert gate.running == 3
        del dropped
        assert gate.running == 0

    asyncio.run(go())


# -- the deadline --------------------------------------------------------------------


def test_the_deadline_cancels_a_request_whole_or_streamed_and_the_server_goes_on():
    from reason.plugins.serve.limits import Limits

    gate = Gate()
    with make_client(gate, limits=Limits(deadline=0.5)) as c:
        error = error_of(chat(c), 504)
        assert (error["type"], error["code"]) == ("timeout_error", "deadline_exceeded")
        body = {"model": "toy", "messages": [{"role": "user", "content": "2+2?"}], "stream": True}
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            lines = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "[DONE]" and '"deadline_exceeded"' in lines[-2]
        assert c.get("/health").json()["searches_in_flight"] == 0
        gate.open.set()
        assert chat(c).status_code == 200
        page = metrics(c.get("/metrics").text)
        assert page[("reason_searches_total", (("outcome", "cancelled"), ("search", "best-of-n")))] == 2


# -- metrics -------------------------------------------------------------------------


def test_metrics_parse_and_count_what_was_asked():
    with make_client() as c:
        usages = [chat(c).json()["usage"] for _ in range(3)]
        assert chat(c, n=0).status_code == 400
        stream = {"model": "toy", "messages": [{"role": "user", "content": "What is 2 + 2?"}], "stream": True}
        with c.stream("POST", "/v1/chat/completions", json=stream) as r:
            assert r.status_code == 200 and list(r.iter_lines())
        page = metrics(c.get("/metrics").text)
    route = (("route", "/v1/chat/completions"),)
    assert page[("reason_requests_total", (("code", "200"), *route))] == 4
    assert page[("reason_requests_total", (("code", "400"), *route))] == 1
    assert page[("reason_request_duration_seconds_count", route)] == 5
    assert page[("reason_time_to_first_token_seconds_count", ())] == 1
    assert page[("reason_searches_total", (("outcome", "done"), ("search", "best-of-n")))] == 4
    # the 3 whole responses' usage, plus the stream's (the same scripted search)
    assert page[("reason_completion_tokens_total", ())] == 4 * usages[0]["completion_tokens"]
    assert page[("reason_prompt_tokens_total", ())] == 4 * usages[0]["prompt_tokens"]
    assert page[("reason_verifier_calls_total", ())] == 4
    assert page[("reason_searches_running", ())] == 0 and page[("reason_searches_queued", ())] == 0


# -- the real server -----------------------------------------------------------------

MODEL = "SmolLM2-135M-Instruct"
KEY = "sk-test-gateway"
QUESTION = [{"role": "user", "content": "Tom has 3 apples and buys 5 more. How many apples does he have?"}]
LONG = [{"role": "user", "content": "Write a very long story about a dragon and a knight, at least 2000 words."}]


GATEWAY = ["--search", "greedy", "--max-tokens", "16", "--require-api-key", "sk-other", "--limit-n", "2",
           "--limit-tokens", "400", "--limit-searches", "2", "--limit-queue", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """A real server with two keys (one from the environment), 2 search slots, a queue of
    2, at most 2 searches a request and 400 tokens a path, and a deadline no test here
    reaches (a burst's queued searches wait for the running ones: ~4 s on 2 cores)."""
    log = tmp_path_factory.mktemp("gateway") / "serve.log"
    with serving(log, *GATEWAY, "--deadline", "120", env={"REASON_SERVE_API_KEY": KEY}) as base:
        yield base


@pytest.fixture(scope="module")
def hurried(tmp_path_factory):
    """The same server with a 4 s deadline."""
    log = tmp_path_factory.mktemp("hurried") / "serve.log"
    with serving(log, *GATEWAY, "--deadline", "4", env={"REASON_SERVE_API_KEY": KEY}) as base:
        yield base


def idle(base: str, seconds: float = 30) -> dict:
    deadline = time.time() + seconds
    while True:
        h = httpx.get(f"{base}/health", timeout=10).json()
        if h["searches_in_flight"] == 0 and h["searches_queued"] == 0 and h["engine"]["rows_in_flight"] == 0:
            return h
        assert time.time() < deadline, f"still busy: {h}"
        time.sleep(0.05)


@pytest.mark.model
def test_model_keys_caps_and_metrics_through_the_openai_client(gateway):
    import openai

    with openai.OpenAI(base_url=f"{gateway}/v1", api_key="sk-wrong", max_retries=0, timeout=120) as c:
        with pytest.raises(openai.AuthenticationError) as info:
            c.chat.completions.create(model=MODEL, messages=QUESTION)
        assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"
    with openai.OpenAI(base_url=f"{gateway}/v1", api_key=KEY, max_retries=0, timeout=120) as c:
        answer = c.chat.completions.create(model=MODEL, messages=QUESTION)
        assert answer.choices[0].message.content
        with pytest.raises(openai.BadRequestError) as info:
            c.chat.completions.create(model=MODEL, messages=QUESTION, n=3)
        assert info.value.body["param"] == "n" and info.value.body["code"] == "limit_exceeded"
        with pytest.raises(openai.BadRequestError) as info:
            c.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1000)
        assert info.value.body["param"] == "max_tokens"
    other = httpx.get(f"{gateway}/v1/models", headers={"Authorization": "Bearer sk-other"}, timeout=30)
    assert other.status_code == 200  # the key given with --require-api-key works beside the environment's
    page = metrics(httpx.get(f"{gateway}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).text)
    route = (("route", "/v1/chat/completions"),)
    assert page[("reason_requests_total", (("code", "401"), *route))] == 1
    assert page[("reason_requests_total", (("code", "200"), *route))] >= 1
    assert page[("reason_requests_total", (("code", "400"), *route))] == 2
    assert page[("reason_completion_tokens_total", ())] >= answer.usage.completion_tokens > 0


@pytest.mark.model
def test_model_a_burst_past_the_queue_gets_429s_and_every_accepted_request_completes(gateway):
    """8 requests at once against 2 slots and a queue of 2: at least 4 are accepted (the
    first 4 arrive before a 16-token search can end), the rest are refused with 429 and
    Retry-After, and every accepted one answers."""
    import openai

    idle(gateway)

    async def go():
        async with openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key=KEY, max_retries=0, timeout=120) as c:
            calls = [c.chat.completions.create(model=MODEL, messages=QUESTION) for _ in range(8)]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(go())
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    answered = [r for r in results if not isinstance(r, BaseException)]
    assert len(refused) + len(answered) == 8, results
    assert refused and len(answered) >= 4
    assert all(r.choices[0].message.content for r in answered)
    assert int(refused[0].response.headers["retry-after"]) >= 1
    idle(gateway)


@pytest.mark.model
def test_model_the_deadline_cancels_the_search_and_frees_its_rows(hurried):
    """400 tokens of greedy take longer than the 4 s deadline on this model: a 504, and
    within seconds no search and no engine row in flight (the rows were dropped)."""
    before = idle(hurried)
    start = time.time()
    r = httpx.post(
        f"{hurried}/v1/chat/completions",
        json={"model": MODEL, "messages": LONG, "max_tokens": 400},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=120,
    )
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded", r.text
    assert time.time() - start < 30
    after = idle(hurried, seconds=20)
    assert after["engine"]["decode_tokens"] - before["engine"]["decode_tokens"] < 400
    assert after["searches_cancelled"] >= before["searches_cancelled"] + 1


# -- a client nobody here wrote: simonw's llm CLI --------------------------------------


def llm_cli(home, *args: str) -> subprocess.CompletedProcess:
    llm = Path(sys.executable).with_name("llm")
    env = {**os.environ, "LLM_USER_PATH": str(home), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    return subprocess.run([str(llm), *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.model
def test_model_the_llm_cli_prompts_streams_and_continues_a_conversation(gateway, tmp_path):
    """llm configured for an OpenAI-compatible endpoint (extra-openai-models.yaml, the key
    passed with --key): a plain prompt, a streamed one, and a second turn with -c, whose
    prompt reaches the model as three turns (its input tokens, from llm's own log, are
    those of the chat template over the conversation)."""
    pytest.importorskip("llm")
    from reason.plugins.backends.models import load_tokenizer, prompt_ids
    from reason.prompts import MATH_SYSTEM

    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: reason\n  model_name: {MODEL}\n  api_base: {gateway}/v1\n  api_key_name: reason\n"
    )
    streamed = llm_cli(tmp_path, "prompt", "-m", "reason", "--key", KEY, "What is 2 + 2?")
    assert streamed.returncode == 0 and streamed.stdout.strip(), streamed.stderr
    refused = llm_cli(tmp_path, "prompt", "-m", "reason", "--key", "sk-wrong", "--no-stream", "2+2?")
    assert refused.returncode != 0 and "401" in refused.stderr + refused.stdout
    plain = llm_cli(tmp_path, "prompt", "-m", "reason", "--key", KEY, "--no-stream", "My name is Ada. Say hello.")
    assert plain.returncode == 0 and plain.stdout.strip(), plain.stderr

    again = llm_cli(tmp_path, "prompt", "-c", "--key", KEY, "--no-stream", "What is my name?")
    assert again.returncode == 0 and again.stdout.strip(), again.stderr
    logs = json.loads(llm_cli(tmp_path, "logs", "--json", "-n", "3").stdout)
    first, last = [r for r in logs if r["prompt"] == "My name is Ada. Say hello."][0], logs[-1]
    assert last["prompt"] == "What is my name?" and last["conversation_id"] == first["conversation_id"]
    tokenizer = load_tokenizer("smollm2")
    turns = [
        {"role": "system", "content": MATH_SYSTEM},
        {"role": "user", "content": first["prompt"]},
        {"role": "assistant", "content": first["response"]},
        {"role": "user", "content": "What is my name?"},
    ]
    prompt = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert last["input_tokens"] == len(prompt_ids(tokenizer, prompt))
