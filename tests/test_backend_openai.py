"""The ``openai`` backend.

Unit tests map requests and responses (pure functions) and drive the HTTP layer against
a scripted fake server on 127.0.0.1 (slowness, 429, 5xx, a server that ignores ``n``).
Integration tests (``-m server``) run the real llama.cpp server
(``llama-cpp-python[server]``) with the embedded SmolLM2 GGUF: every registered search
strategy through it, the CLI, and the server killed mid-run.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time

import pytest

from llama_server import FakeServer, LlamaServer, completion_body, have_llama_server, ok, slow, status

from reason import BackendError, Config, GenerateRequest, Runtime, SamplingParams, UsageError, get_registry
from reason.plugins.backends.openai import OpenAIBackend, normalize_base_url
from reason.plugins.backends.openai_payload import completion_payload, finish_and_stop, parse_choice


class Vocab:
    """Stands in for the tokenizer: one id per distinct token text, whitespace count."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def token_id(self, piece: str) -> int:
        return self.ids.setdefault(piece, 100 + len(self.ids))

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def backend(url: str, **options) -> OpenAIBackend:
    return OpenAIBackend(Config(backend="openai", options={"base_url": url, "retry_backoff": 0.01, **options}))


def request(n: int = 1, **params) -> GenerateRequest:
    return GenerateRequest(prompt="Q: 1+1?\nA:", params=SamplingParams(**{"max_tokens": 8, **params}), n=n)


# -- configuration ------------------------------------------------------------------------


def test_registered_lazily():
    registration, _ = get_registry().lookup("backend", "openai")
    assert getattr(registration.factory, "target", "").endswith("openai:OpenAIBackend")


@pytest.mark.parametrize(
    "given, expected",
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1"),
        ("http://host:9/v1/", "http://host:9/v1"),
        ("https://api.example.com/openai/v1", "https://api.example.com/openai/v1"),
    ],
)
def test_base_url_normalized(given, expected):
    assert normalize_base_url(given) == expected


@pytest.mark.parametrize("bad", ["127.0.0.1:8000", "ftp://x/v1", "http://"])
def test_bad_base_url_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="--base-url"):
        backend(bad)


def test_bad_numeric_option_is_a_usage_error():
    with pytest.raises(UsageError, match="max_concurrency"):
        backend("http://127.0.0.1:1/v1", max_concurrency="many")
    with pytest.raises(UsageError, match="timeout"):
        backend("http://127.0.0.1:1/v1", timeout=0)


def test_tokenizer_that_does_not_load_says_pass_tokenizer():
    b = backend("http://127.0.0.1:1/v1", tokenizer="/no/such/model-dir")
    with pytest.raises(UsageError, match="--tokenizer"):
        b.format_prompt([{"role": "user", "content": "hi"}])


def test_api_key_from_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert backend("http://127.0.0.1:1/v1").api_key == "sk-env"
    assert backend("http://127.0.0.1:1/v1", api_key="sk-opt").api_key == "sk-opt"


# -- request mapping ------------------------------------------------------------------------


def test_payload_carries_every_sampling_knob():
    req = request(n=3, temperature=0.7, top_p=0.9, stop=("\n\n",), seed=11, logprobs=4)
    payload = completion_payload("m", req, 3)
    assert payload["model"] == "m" and payload["prompt"] == req.prompt
    assert (payload["n"], payload["max_tokens"], payload["temperature"], payload["top_p"]) == (3, 8, 0.7, 0.9)
    assert payload["stop"] == ["\n\n"] and payload["seed"] == 11 and payload["logprobs"] == 4
    assert payload["include_stop_str_in_output"] is True and payload["return_tokens_as_token_ids"] is True
    plain = completion_payload("m", req, 1, seed_offset=2, extras=False)
    assert plain["seed"] == 13 and "include_stop_str_in_output" not in plain


def test_payload_asks_vllm_not_to_add_a_second_bos():
    templated = GenerateRequest(prompt="<|begin_of_text|><|start_header_id|>user", params=SamplingParams())
    assert completion_payload("m", templated, 1, bos="<|begin_of_text|>")["add_special_tokens"] is False
    # a prompt without BOS (or a model without one) keeps the server's default
    assert "add_special_tokens" not in completion_payload("m", request(), 1, bos="<|begin_of_text|>")
    assert "add_special_tokens" not in completion_payload("m", templated, 1, bos=None)
    assert "add_special_tokens" not in completion_payload("m", templated, 1, extras=False, bos="<|begin_of_text|>")


def test_payload_always_asks_for_the_sampled_logprob():
    assert completion_payload("m", request(logprobs=0), 1)["logprobs"] == 1
    assert "stop" not in completion_payload("m", request(), 1)


# -- response mapping ------------------------------------------------------------------------


def _choice(text, tokens, finish="stop", **extra):
    return {
        "text": text,
        "finish_reason": finish,
        "logprobs": {
            "tokens": tokens,
            "token_logprobs": [-0.5] * len(tokens),
            "top_logprobs": [{t: -0.5, "zz": -0.1, "yy": -3.0, "xx": -9.0} for t in tokens],
        },
        **extra,
    }


def test_vllm_choice_with_stop_string_and_token_ids():
    choice = _choice("2.\n\n", ["token_id:17", "token_id:5"], stop_reason="\n\n", token_ids=[17, 5])
    c = parse_choice(choice, SamplingParams(stop=("\n\n",), logprobs=2), 9, Vocab())
    assert c.text == "2.\n\n" and c.finish_reason == "stop"
    assert c.token_ids == (17, 5) and c.prompt_tokens == 9
    assert c.logprobs == (-0.5, -0.5)
    assert c.top_logprobs == ((-0.1, -0.5), (-0.1, -0.5))  # top-2, highest first


def test_vllm_eos_and_stop_token_are_eos():
    eos = parse_choice(_choice("Done", ["token_id:3"], stop_reason=None), SamplingParams(stop=("\n\n",)), 1, Vocab())
    assert eos.finish_reason == "eos" and eos.finished
    token = parse_choice(_choice("Done", ["token_id:3"], stop_reason=2), SamplingParams(), 1, Vocab())
    assert token.finish_reason == "eos"


def test_vllm_ids_from_token_strings():
    c = parse_choice(_choice("ab", ["token_id:40", "token_id:41"], stop_reason=None), SamplingParams(), 1, Vocab())
    assert c.token_ids == (40, 41)


def test_length_is_length():
    c = parse_choice(_choice("a b", ["a", " b"], finish="length"), SamplingParams(stop=("\n",)), 1, Vocab())
    assert c.finish_reason == "length" and c.text == "a b" and c.num_tokens == 2


def test_stripped_stop_string_is_restored_from_the_tokens():
    # llama-cpp-python cuts the stop string off the text but its logprob tokens cover it.
    choice = _choice("Step 1", ["Step", " 1", "\n\n"])
    vocab = Vocab()
    c = parse_choice(choice, SamplingParams(stop=("\n\n",)), 4, vocab)
    assert c.text == "Step 1\n\n" and c.finish_reason == "stop"
    assert c.token_ids == (vocab.ids["Step"], vocab.ids[" 1"], vocab.ids["\n\n"])


def test_stop_without_a_stop_string_is_eos():
    c = parse_choice(_choice("The end.", ["The", " end", "."]), SamplingParams(stop=("\n\n",)), 4, Vocab())
    assert c.text == "The end." and c.finish_reason == "eos"


@pytest.mark.parametrize(
    "extra, expected",
    [
        ({"matched_stop": "\n\n"}, ("stop", "\n\n")),  # SGLang
        ({"matched_stop": 2}, ("eos", None)),
        ({"stopping_word": "\n\n", "stop_type": "word"}, ("stop", "\n\n")),  # llama.cpp native
        ({"stopping_word": "", "stop_type": "eos"}, ("eos", None)),
    ],
)
def test_other_servers_stop_reports(extra, expected):
    assert finish_and_stop({"finish_reason": "stop", **extra}, ("\n\n",), "x", []) == expected


def test_choice_without_logprobs_counts_tokens():
    c = parse_choice({"text": "one two three", "finish_reason": "length"}, SamplingParams(), 2, Vocab())
    assert c.num_tokens == 3 and c.logprobs == (0.0, 0.0, 0.0) and c.finish_reason == "length"


# -- HTTP against a scripted fake server --------------------------------------------------------


def test_batch_is_sent_concurrently_and_mapped_in_order():
    with FakeServer(default=lambda body: (200, completion_body(body["prompt"][-1], body["n"]), 0.5)) as server:
        b = backend(server.base_url, max_concurrency=4)
        reqs = [GenerateRequest(prompt=f"p{i}", params=SamplingParams(max_tokens=4), n=2) for i in range(4)]
        out = b.generate(reqs)
        b.close()
    assert [[c.text for c in cs] for cs in out] == [[str(i)] * 2 for i in range(4)]
    assert len(server.requests) == 4 and all(r["n"] == 2 for r in server.requests)
    assert server.max_in_flight >= 2  # the requests overlapped


def test_greedy_samples_are_asked_once():
    # vLLM's server refuses n > 1 with temperature 0; n greedy samples are one text anyway
    with FakeServer(default=lambda body: (200, completion_body("same", body["n"]), 0.0)) as server:
        b = backend(server.base_url)
        (out,) = b.generate([GenerateRequest(prompt="p", params=SamplingParams(temperature=0.0, max_tokens=4), n=3)])
        b.close()
    assert [c.text for c in out] == ["same"] * 3
    assert len(server.requests) == 1 and server.requests[0]["n"] == 1


def test_concurrency_is_bounded():
    with FakeServer(default=lambda body: (200, completion_body("x", body["n"]), 0.1)) as server:
        b = backend(server.base_url, max_concurrency=2)
        out = b.generate([request() for _ in range(6)])
        b.close()
    assert len(out) == 6 and len(server.requests) == 6
    assert server.max_in_flight <= 2


def test_server_ignoring_n_gets_one_request_per_sample():
    with FakeServer(default=ok(honour_n=False)) as server:
        b = backend(server.base_url)
        out = b.generate([request(n=3, seed=5)])
        assert len(out[0]) == 3 and not b.supports_n
        # first the n=3 request, then two single ones with distinct seeds
        assert sorted(r["n"] for r in server.requests) == [1, 1, 3] and server.requests[0]["n"] == 3
        assert sorted(r["seed"] for r in server.requests) == [5, 6, 7]
        server.requests.clear()
        assert len(b.generate([request(n=2)])[0]) == 2
        assert [r["n"] for r in server.requests] == [1, 1]  # remembered
        b.close()


def test_retries_429_and_5xx_then_succeeds():
    with FakeServer(script=[status(429), status(503), status(500)]) as server:
        b = backend(server.base_url, max_retries=3)
        out = b.generate([request()])
        b.close()
    assert out[0][0].text == "Hello." and b.retries == 3 and len(server.requests) == 4


def test_gives_up_after_max_retries_with_a_clear_error():
    with FakeServer(default=status(503, "overloaded")) as server:
        b = backend(server.base_url, max_retries=2)
        with pytest.raises(BackendError, match=r"after 3 attempt\(s\).*HTTP 503.*overloaded"):
            b.generate([request()])
        b.close()
    assert len(server.requests) == 3


def test_slow_server_hits_the_timeout_and_is_retried():
    with FakeServer(script=[slow(3.0), slow(3.0)]) as server:
        b = backend(server.base_url, timeout=0.5, max_retries=3)
        out = b.generate([request()])
        b.close()
    assert out[0][0].text == "Hello."
    assert b.retries == 2 and len(server.requests) == 3


def test_always_slow_server_fails_with_the_timeout_named():
    with FakeServer(default=slow(3.0)) as server:
        b = backend(server.base_url, timeout=0.3, max_retries=1)
        with pytest.raises(BackendError, match=r"no answer within 0.3s.*-o timeout"):
            b.generate([request()])
        b.close()


def test_unreachable_server_names_the_url_and_the_fix():
    from llama_server import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    b = backend(url, max_retries=1)
    with pytest.raises(BackendError) as info:
        b.generate([request()])
    message = str(info.value)
    assert url in message and "--base-url" in message and "vllm serve" in message


def test_wrong_model_lists_the_served_models():
    with FakeServer(models=["alpha", "beta"]) as server:
        b = OpenAIBackend(Config(backend="openai", model="gamma", options={"base_url": server.base_url}))
        with pytest.raises(BackendError, match=r"does not serve model 'gamma'.*alpha, beta"):
            b.generate([request()])
        b.close()


def test_load_checks_the_server_up_front_without_generating():
    with FakeServer(models=["alpha"]) as server:
        good = backend(server.base_url)
        good.load()
        wrong = OpenAIBackend(Config(backend="openai", model="gamma", options={"base_url": server.base_url}))
        with pytest.raises(BackendError, match=r"does not serve model 'gamma'"):
            wrong.load()
        good.close()
        wrong.close()
    assert good.model_name == "alpha" and server.requests == []


def test_default_model_is_the_first_served():
    with FakeServer(models=["first", "second"]) as server:
        b = backend(server.base_url)
        b.generate([request()])
        b.close()
    assert b.model_name == "first" and server.requests[0]["model"] == "first"


def test_api_key_is_sent_and_a_refusal_says_how_to_fix_it():
    with FakeServer(default=status(401, "invalid key")) as server:
        b = backend(server.base_url, api_key="sk-test")
        with pytest.raises(BackendError, match="--api-key"):
            b.generate([request()])
        b.close()
    assert server.headers[0].get("Authorization") == "Bearer sk-test"


def test_server_rejecting_vllm_extras_gets_plain_requests():
    def strict(body):
        if "include_stop_str_in_output" in body:
            return 422, {"detail": "extra fields not permitted: include_stop_str_in_output"}, 0.0
        return ok()(body)

    with FakeServer(default=strict) as server:
        b = backend(server.base_url)
        assert b.generate([request()])[0][0].text == "Hello."
        assert not b.send_extras
        b.generate([request()])
        b.close()
    assert "include_stop_str_in_output" not in server.requests[-1]


def test_llama_cpp_python_is_told_to_sample_from_temperature_and_top_p_alone():
    with FakeServer(owned_by="me") as server:  # what llama-cpp-python's /v1/models says
        b = backend(server.base_url)
        b.generate([request()])
        b.close()
    body = server.requests[0]
    assert (body["top_k"], body["min_p"], body["repeat_penalty"]) == (0, 0.0, 1.0)
    with FakeServer(owned_by="vllm") as server:
        b = backend(server.base_url)
        b.generate([request()])
        b.close()
    assert "repeat_penalty" not in server.requests[0] and "top_k" not in server.requests[0]


def test_runtime_through_the_fake_server_counts_usage():
    """The whole runtime on the backend (no tokenizer needed: the fake gives token ids)."""

    class Backend(OpenAIBackend):
        def format_prompt(self, messages):
            return "".join(m["content"] for m in messages)

    answer = "The answer is \\boxed{4}."
    with FakeServer(default=ok(answer, stop_reason=None)) as server:
        config = Config(backend="openai", search="best-of-n", n=3, options={"base_url": server.base_url})
        with Runtime(config, backend=Backend(config)) as rt:
            solution = rt.solve("What is 2+2?")
    assert solution.answer == "4"
    assert solution.usage.sequences == 3 and solution.usage.completion_tokens == 3
    assert solution.usage.prompt_tokens == 5


# -- continuous: generate_async ----------------------------------------------------------------


def by_prompt(delays: dict[str, float]):
    """Answer each prompt with its own text, after that prompt's delay."""
    return lambda body: (200, completion_body(body["prompt"], body["n"]), delays.get(body["prompt"], 0.0))


def test_the_backend_is_continuous():
    assert backend("http://127.0.0.1:1/v1").continuous


def test_requests_resolve_independently():
    """A fast request submitted after a slow one resolves first, without waiting for it."""
    with FakeServer(default=by_prompt({"slow": 1.5, "fast": 0.0})) as server:
        b = backend(server.base_url, max_concurrency=4)
        b.load()  # the /models check is not part of the race
        finished: list[tuple[str, float]] = []

        async def one(prompt: str) -> None:
            start = time.monotonic()
            (c,) = await b.generate_async(GenerateRequest(prompt=prompt, params=SamplingParams(max_tokens=4)))
            finished.append((c.text, time.monotonic() - start))

        async def main() -> None:
            slow_task = asyncio.create_task(one("slow"))
            await asyncio.sleep(0.05)  # the slow one is on the wire first
            await asyncio.gather(slow_task, one("fast"))

        asyncio.run(main())
        b.close()
    assert [text for text, _ in finished] == ["fast", "slow"]
    (_, fast_s), (_, slow_s) = finished
    assert fast_s < 0.7 and slow_s >= 1.4


def test_max_concurrency_bounds_every_caller_together():
    """Async callers on one loop and a blocking generate() in a thread share the bound."""
    with FakeServer(default=lambda body: (200, completion_body(body["prompt"], body["n"]), 0.2)) as server:
        b = backend(server.base_url, max_concurrency=2)
        sync_out: list[list] = []
        thread = threading.Thread(
            target=lambda: sync_out.extend(
                b.generate([GenerateRequest(prompt=f"s{i}", params=SamplingParams(max_tokens=4)) for i in range(4)])
            )
        )

        async def main() -> list[list]:
            thread.start()
            reqs = [GenerateRequest(prompt=f"a{i}", params=SamplingParams(max_tokens=4)) for i in range(4)]
            return await asyncio.gather(*(b.generate_async(r) for r in reqs))

        async_out = asyncio.run(main())
        thread.join(timeout=30)
        b.close()
    assert [cs[0].text for cs in async_out] == [f"a{i}" for i in range(4)]
    assert [cs[0].text for cs in sync_out] == [f"s{i}" for i in range(4)]
    assert len(server.requests) == 8
    assert server.max_in_flight == 2  # bounded, and the bound was reached


def test_cancelling_an_await_cancels_its_http_request():
    with FakeServer(default=by_prompt({"slow": 10.0})) as server:
        b = backend(server.base_url, max_concurrency=1)
        b.load()

        async def main() -> float:
            task = asyncio.create_task(b.generate_async(GenerateRequest(prompt="slow", params=SamplingParams())))
            deadline = time.monotonic() + 5
            while server.in_flight == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert server.in_flight == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # the only slot is free again: a new request does not wait for the slow one
            start = time.monotonic()
            (c,) = await b.generate_async(GenerateRequest(prompt="fast", params=SamplingParams()))
            assert c.text == "fast"
            return time.monotonic() - start

        elapsed = asyncio.run(main())
        deadline = time.monotonic() + 5
        while server.hangups == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        b.close()
    assert elapsed < 2.0
    assert server.hangups == 1 and server.in_flight == 0  # the server saw the connection close
    assert [r["prompt"] for r in server.requests] == ["slow", "fast"]


def test_a_failed_request_in_a_batch_cancels_the_rest():
    def behave(body):
        if body["prompt"] == "bad":
            return 400, {"error": {"message": "prompt too long"}}, 0.2
        return 200, completion_body(body["prompt"], body["n"]), 10.0

    with FakeServer(default=behave) as server:
        b = backend(server.base_url)
        start = time.monotonic()
        with pytest.raises(BackendError, match="HTTP 400: prompt too long"):
            b.generate([GenerateRequest(prompt=p, params=SamplingParams()) for p in ("ok1", "bad", "ok2")])
        elapsed = time.monotonic() - start
        deadline = time.monotonic() + 5
        while server.hangups < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        b.close()
    assert elapsed < 5.0 and server.hangups == 2  # the slow ones were dropped, not waited for


def test_sync_and_async_give_the_same_completions():
    with FakeServer(default=ok(honour_n=False)) as server:
        reqs = [request(n=3, seed=5), request(n=1, seed=9)]
        b = backend(server.base_url)
        sync_out = b.generate(reqs)
        b.close()
        sync_seeds = sorted(r["seed"] for r in server.requests if r["n"] == 1)
        server.requests.clear()
        a = backend(server.base_url)

        async def main():
            return await asyncio.gather(*(a.generate_async(r) for r in reqs))

        async_out = asyncio.run(main())
        a.close()
        async_seeds = sorted(r["seed"] for r in server.requests if r["n"] == 1)
    assert [[c.text for c in cs] for cs in sync_out] == [[c.text for c in cs] for cs in async_out]
    assert [len(cs) for cs in async_out] == [3, 1] and not a.supports_n
    assert sync_seeds == async_seeds == [6, 7, 9]  # sample j of a split request: seed + j


def test_close_fails_what_is_in_flight_and_a_later_call_starts_afresh():
    with FakeServer(default=by_prompt({"slow": 10.0})) as server:
        b = backend(server.base_url)
        b.load()
        errors: list[BaseException] = []

        def call() -> None:
            try:
                b.generate([GenerateRequest(prompt="slow", params=SamplingParams())])
            except BaseException as exc:  # noqa: BLE001 - the test inspects it
                errors.append(exc)

        thread = threading.Thread(target=call)
        thread.start()
        deadline = time.monotonic() + 5
        while server.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        first_io = b._io
        b.close()
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], BackendError) and "closed" in str(errors[0])
        assert b.generate([GenerateRequest(prompt="again", params=SamplingParams())])[0][0].text == "again"
        second_io = b._io
        b.close()
    # each use ran on its own loop thread, and close() ended it (other tests' backends
    # may still have theirs: only this backend's are checked)
    assert first_io is not second_io
    assert not first_io.thread.is_alive() and not second_io.thread.is_alive()


# -- the real llama.cpp server -----------------------------------------------------------------

needs_server = pytest.mark.skipif(
    not have_llama_server(), reason="llama-cpp-python[server] is not installed: run `make server-deps`"
)


@pytest.fixture(scope="module")
def llama():
    """The real llama.cpp server on 127.0.0.1:PORT, shared by this module's server tests."""
    server = LlamaServer().start()
    yield server
    server.stop()


def real(url: str, **options) -> OpenAIBackend:
    return OpenAIBackend(Config(backend="openai", options={"base_url": url, **options}))


@pytest.mark.server
@needs_server
def test_real_server_stop_string_logprobs_and_ids(llama):
    b = real(llama.base_url)
    prompt = b.format_prompt([{"role": "user", "content": "Count from 1 to 20, one number per line."}])
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    params = SamplingParams(temperature=0.0, max_tokens=40, stop=("\n",), logprobs=3)
    (completions,) = b.generate([GenerateRequest(prompt=prompt, params=params, n=1)])
    c = completions[0]
    assert c.finish_reason == "stop" and c.text.endswith("\n") and c.text.count("\n") == 1
    assert c.num_tokens >= 1 and len(c.logprobs) == c.num_tokens == len(c.top_logprobs)
    # llama-cpp-python keys top logprobs by token text, so two tokens with the same text
    # collapse into one entry: a position may show fewer than k.
    assert all(1 <= len(top) <= 3 and list(top) == sorted(top, reverse=True) for top in c.top_logprobs)
    assert sum(len(top) == 3 for top in c.top_logprobs) * 2 >= len(c.top_logprobs)
    assert all(lp <= 0.0 for lp in c.logprobs) and c.prompt_tokens > 10
    # greedy: every sampled token is the top choice (the server's own penalties are off)
    assert all(abs(lp - top[0]) < 1e-4 for lp, top in zip(c.logprobs, c.top_logprobs))
    # ids map back to the text: the tokenizer decodes them to exactly what was generated
    assert b.tokenizer.decode(list(c.token_ids)) == c.text
    b.close()


@pytest.mark.server
@needs_server
def test_real_server_length_and_eos(llama):
    b = real(llama.base_url)
    prompt = b.format_prompt([{"role": "user", "content": "Say hi."}])
    params = SamplingParams(temperature=0.0, max_tokens=3, logprobs=1)
    (short,) = b.generate([GenerateRequest(prompt=prompt, params=params, n=1)])
    assert short[0].finish_reason == "length" and short[0].num_tokens == 3
    long = SamplingParams(temperature=0.0, max_tokens=200, logprobs=1)
    (full,) = b.generate([GenerateRequest(prompt=prompt, params=long, n=1)])
    assert full[0].finish_reason == "eos" and full[0].num_tokens < 200
    b.close()


@pytest.mark.server
@needs_server
def test_real_server_n_samples_and_model_check(llama):
    b = real(llama.base_url, max_concurrency=2)
    prompt = b.format_prompt([{"role": "user", "content": "Name a color."}])
    params = SamplingParams(temperature=1.0, max_tokens=8, seed=1)
    out = b.generate([GenerateRequest(prompt=prompt, params=params, n=3), GenerateRequest(prompt=prompt, params=params, n=1)])
    assert [len(cs) for cs in out] == [3, 1]
    assert b.model_name == llama.model  # llama-cpp-python serves the model under its path
    b.close()
    wrong = OpenAIBackend(Config(backend="openai", model="no-such-model", options={"base_url": llama.base_url}))
    with pytest.raises(BackendError, match="no-such-model"):
        wrong.generate([GenerateRequest(prompt=prompt, params=params)])
    wrong.close()


@pytest.mark.server
@needs_server
def test_real_server_async_matches_sync_and_survives_a_cancel(llama):
    b = real(llama.base_url, max_concurrency=2)
    prompts = [b.format_prompt([{"role": "user", "content": q}]) for q in ("Name a fruit.", "What is 2 + 2?")]
    params = SamplingParams(temperature=0.0, max_tokens=12, logprobs=2)
    reqs = [GenerateRequest(prompt=p, params=params) for p in prompts]
    sync_out = b.generate(reqs)

    async def main():
        story = GenerateRequest(prompt=b.format_prompt([{"role": "user", "content": "Tell a long story."}]),
                                params=SamplingParams(temperature=1.0, max_tokens=300))
        long = asyncio.create_task(b.generate_async(story))
        await asyncio.sleep(0.5)
        long.cancel()
        with pytest.raises(asyncio.CancelledError):
            await long
        return await asyncio.gather(*(b.generate_async(r) for r in reqs))

    async_out = asyncio.run(main())
    b.close()
    assert [[c.text for c in cs] for cs in async_out] == [[c.text for c in cs] for cs in sync_out]
    assert all(len(cs) == 1 and cs[0].num_tokens >= 1 and len(cs[0].top_logprobs[0]) >= 1 for cs in async_out)


def _strategies() -> list[str]:
    return get_registry().names("search")


@pytest.mark.server
@needs_server
@pytest.mark.parametrize("search", _strategies())
def test_every_strategy_through_the_real_server(llama, search):
    config = Config(
        backend="openai",
        search=search,
        n=2,
        max_tokens=64,
        step_tokens=32,
        temperature=0.8,
        seed=0,
        options={"base_url": llama.base_url, "beam_width": 2, "max_steps": 3},  # flat: taken by the searches that have them
    )
    with Runtime(config) as rt:
        solution = rt.solve("What is 3 + 4?")
    assert solution.usage.model_calls >= 1 and solution.usage.completion_tokens > 0
    assert solution.usage.prompt_tokens > 0 and solution.candidates
    generated = [n.step for n in solution.tree.nodes if n.step is not None and not n.step.injected]
    assert generated and all(len(s.logprobs) == len(s.token_ids) for s in generated)
    assert any(s.top_logprobs and len(s.top_logprobs[0]) == config.logprobs for s in generated)
    assert all(lp <= 0.0 for s in generated for lp in s.logprobs)


@pytest.mark.server
@needs_server
def test_cli_solve_through_the_real_server(llama):
    args = ["solve", "--backend", "openai", "--base-url", llama.base_url, "--search", "beam", "--n", "4",
            "--max-tokens", "64", "--json", "What is 2 + 3?"]
    result = subprocess.run(
        [sys.executable, "-c", "from reason.cli import main; main()", *args],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout)
    assert data["usage"]["completion_tokens"] > 0 and data["usage"]["model_calls"] >= 1


@pytest.mark.server
@needs_server
@pytest.mark.timeout(300)
def test_server_killed_mid_run_gives_a_clear_error_and_no_hang():
    server = LlamaServer().start()
    try:
        config = Config(
            backend="openai", search="best-of-n", n=8, max_tokens=256, temperature=1.0,
            options={"base_url": server.base_url, "max_concurrency": 2, "max_retries": 2, "retry_backoff": 0.1},
        )
        rt = Runtime(config)
        b = rt.backend
        b.format_prompt([{"role": "user", "content": "warm up"}])  # tokenizer loaded before the clock

        killed_at: list[float] = []

        def killer():
            deadline = time.monotonic() + 120
            while b.http_requests < 3 and time.monotonic() < deadline:  # /models + 2 completions in flight
                time.sleep(0.05)
            time.sleep(0.3)
            server.kill()
            killed_at.append(time.monotonic())

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        with pytest.raises(BackendError) as info:
            rt.solve("Write a long story about a robot.")
        failed_at = time.monotonic()
        thread.join(timeout=30)
        rt.close()
        assert server.base_url in str(info.value) and "--base-url" in str(info.value)
        # no hang: the error comes within the retries' time after the kill (measured from
        # the kill, so a slow machine before it does not count; 2 retries, 0.1 s backoff)
        assert killed_at and failed_at - killed_at[0] < 60
    finally:
        server.stop()
