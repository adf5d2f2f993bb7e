"""The ``vllm`` backend.

Unit tests (no vLLM needed): how vLLM's outputs map to ours, per-sample seeds, the
one-line reason of a failed start, and the engine-thread plumbing (continuous requests,
cancellation, close) against a scripted stand-in for ``AsyncLLM``.

Integration tests (``-m vllm``): the real engine in this process. Without a GPU that is
vLLM's CPU build, which `make test` installs (``scripts/install-vllm.sh``), so they run
in CI: every search strategy, greedy text and top-5 logprobs against the transformers
backend on the same weights, concurrent requests, seeds under load, cancellation,
prefix-cache counters, and the errors of a bad model or an impossible memory setting.
One engine serves the whole module (starting one takes 25-80 s on 2 cores). Tests marked
``gpu`` need CUDA (run them on a GPU machine with ``pytest -m gpu tests/test_backend_vllm.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from vllm_server import cuda, require_vllm

from reason import BackendError, Config, Continuation, GenerateRequest, Runtime, SamplingParams, UsageError, Watch, get_registry
from reason.events import EngineStep
from reason.plugins.backends import vllm as vllm_backend
from reason.plugins.backends import vllm_cpu
from reason.plugins.backends.vllm import VLLMBackend
from reason.plugins.backends.vllm_errors import failure_reason
from reason.plugins.backends.vllm_outputs import (
    completions_from_output,
    engine_prompt,
    finish_reason,
    logprobs_from_positions,
    sample_kwargs,
    sampling_kwargs,
)
from reason.types import sample_seed

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
ROOT = Path(__file__).resolve().parent.parent
SMALL = {"gpu_memory_utilization": 0.3 if cuda() else 0.15}
"""The share of memory the test engine reserves: on CPU a share of RAM (the backend's
default there, 0.3, is 7 GB on these machines; a 135M model needs far less)."""


def Logprob(value: float, rank: int | None = None):
    return SimpleNamespace(logprob=value, rank=rank, decoded_token=None)


def output(text, token_ids, logprobs, finish="stop", stop_reason=None, index=0):
    return SimpleNamespace(
        index=index, text=text, token_ids=token_ids, cumulative_logprob=None, logprobs=logprobs,
        finish_reason=finish, stop_reason=stop_reason,
    )


# -- mapping ------------------------------------------------------------------------------------


def test_registered_lazily():
    registration, _ = get_registry().lookup("backend", "vllm")
    assert getattr(registration.factory, "target", "").endswith("vllm:VLLMBackend")


def test_sampling_params_mapping():
    params = SamplingParams(temperature=0.6, top_p=0.95, max_tokens=32, stop=("\n\n",), seed=3, logprobs=5)
    kwargs = sampling_kwargs(params, 4)
    assert kwargs == dict(
        n=4, temperature=0.6, top_p=0.95, max_tokens=32, stop=["\n\n"],
        include_stop_str_in_output=True, logprobs=5, seed=3,
    )
    assert sampling_kwargs(SamplingParams(), 1)["stop"] is None and "seed" not in sampling_kwargs(SamplingParams(), 1)


def test_each_sample_is_one_request_with_the_transformers_backends_seed():
    from reason.types import sample_seed as core_sample_seed

    params = SamplingParams(seed=3)
    seeds = [sample_kwargs(params, i)["seed"] for i in range(4)]
    assert seeds == [core_sample_seed(3, i) for i in range(4)] == [sample_seed(3, i) for i in range(4)]
    assert len(set(seeds)) == 4 and all(0 <= s < 2**63 for s in seeds)
    # neighbouring request seeds share no sample seed (vLLM's own n would use seed + i)
    assert not set(seeds) & {sample_seed(4, i) for i in range(4)}
    assert all(sample_kwargs(params, i)["n"] == 1 for i in range(4))
    assert "seed" not in sample_kwargs(SamplingParams(), 0)


def test_prompt_ids_are_rendered_by_the_engines_renderer_where_it_has_one():
    rendered = []

    def render_cmpl(prompts):
        rendered.extend(prompts)
        return [{"type": "token", **p} for p in prompts]

    with_renderer = SimpleNamespace(renderer=SimpleNamespace(render_cmpl=render_cmpl))
    assert engine_prompt(with_renderer, (5, 6)) == {"type": "token", "prompt_token_ids": [5, 6]}
    assert rendered == [{"prompt_token_ids": [5, 6]}]
    assert engine_prompt(SimpleNamespace(), (5, 6)) == {"prompt_token_ids": [5, 6]}  # older vLLM


@pytest.mark.parametrize(
    "reason, stop_reason, expected",
    [
        ("length", None, "length"),
        ("stop", "\n\n", "stop"),  # a stop string matched
        ("stop", None, "eos"),  # EOS
        ("stop", 2, "eos"),  # a stop token id (e.g. <|im_end|> from generation_config)
    ],
)
def test_finish_reason(reason, stop_reason, expected):
    assert finish_reason(reason, stop_reason) == expected


def test_logprobs_sampled_token_outside_the_top_k():
    # vLLM puts the top-k in each position's dict, plus the sampled token when it is not
    # among them (then k+1 entries).
    positions = [
        {5: Logprob(-0.1, 1), 6: Logprob(-2.5, 2)},
        {9: Logprob(-0.3, 1), 8: Logprob(-1.9, 2), 7: Logprob(-4.0, 5)},
    ]
    chosen, top = logprobs_from_positions([5, 7], positions, 2)
    assert chosen == [-0.1, -4.0]
    assert top == [[-0.1, -2.5], [-0.3, -1.9]]


def test_logprobs_k_zero_and_missing():
    chosen, top = logprobs_from_positions([5], [{5: Logprob(-0.7, 3)}], 0)
    assert chosen == [-0.7] and top == [[]]
    chosen, top = logprobs_from_positions([1, 2], None, 3)
    assert chosen == [0.0, 0.0] and top == [[], []]


def test_request_output_to_completions():
    request = GenerateRequest(prompt="p", params=SamplingParams(stop=("\n\n",), logprobs=1), n=2)
    ro = SimpleNamespace(
        prompt_token_ids=[1, 2, 3, 4],
        outputs=[
            output("b.", [11, 12], [{11: Logprob(-0.2, 1)}, {12: Logprob(-0.4, 1)}], "stop", None, index=1),
            output("a\n\n", [10, 13], [{10: Logprob(-0.5, 1)}, {13: Logprob(-0.6, 1)}], "stop", "\n\n", index=0),
        ],
    )
    first, second = completions_from_output(ro, request)
    assert (first.text, first.finish_reason, first.token_ids) == ("a\n\n", "stop", (10, 13))
    assert (second.text, second.finish_reason) == ("b.", "eos") and second.finished
    assert first.prompt_tokens == 4 and first.logprobs == (-0.5, -0.6) and first.top_logprobs == ((-0.5,), (-0.6,))


def test_wrong_number_of_outputs_is_a_backend_error():
    request = GenerateRequest(prompt="p", n=2)
    ro = SimpleNamespace(prompt_token_ids=[1], outputs=[output("a", [1], None)])
    with pytest.raises(BackendError, match="asked for 2"):
        completions_from_output(ro, request)


# -- why a start failed, in one line ----------------------------------------------------------------

WORKER_LOG = """WorkerProc failed to start.
Traceback (most recent call last):
  File "/x/vllm/v1/executor/multiproc_executor.py", line 920, in worker_main
    worker = WorkerProc(*args, **kwargs)
ValueError: Available memory on node 0 (11.15/13.71 GiB) on startup is less than desired CPU memory utilization (0.99, 13.58 GiB).
EngineCore failed to start.
Traceback (most recent call last):
  File "/x/vllm/v1/engine/core.py", line 1482, in run_engine_core
Exception: WorkerProc initialization failed due to an exception in a background process. See stack trace for root cause.
"""


def test_failure_reason_digs_the_root_cause_out_of_the_engine_processes_log():
    generic = RuntimeError("Engine core initialization failed. See root cause above. Failed core proc(s): {}")
    reason = failure_reason(generic, WORKER_LOG)
    assert reason.startswith("ValueError: Available memory on node 0") and "\n" not in reason


def test_failure_reason_of_an_error_raised_here_and_of_nothing_known():
    class ValidationError(ValueError):  # shaped like pydantic's: a multi-line str, errors()
        def errors(self):
            return [{"msg": "Value error, Unrecognized model in /m. Should have a `model_type` key in its config.json."}]

    bad = ValidationError("1 validation error for ModelConfig\n  Value error, Unrecognized model in /m ...\n  more")
    assert failure_reason(bad, WORKER_LOG) == "Unrecognized model in /m. Should have a `model_type` key in its config.json."
    assert failure_reason(OSError("no such file\nsecond line")) == "OSError: no such file"
    unknown = failure_reason(RuntimeError("Engine core initialization failed. See root cause above."), "")
    assert "initialization failed" in unknown and "log above" in unknown and "\n" not in unknown


# -- the engine thread, against a scripted AsyncLLM ------------------------------------------------


class FakeTokenizer:
    """Characters are tokens; ``<s>`` is BOS (id 1), added in front with special tokens."""

    bos_token = "<s>"
    chat_template = "x"

    def __call__(self, text, add_special_tokens=True):
        ids = [ord(c) for c in text.replace("<s>", chr(1))]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "<s>PROMPT:"


class FakeAsyncLLM:
    """Scripted ``AsyncLLM``: each request yields one final output after ``delay`` seconds
    per token asked for; its text names its seed. Records requests, aborts, shutdown."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.requests = []
        self.aborted = []
        self.shut_down = False

    async def generate(self, prompt, params, request_id):
        self.requests.append((request_id, prompt, params))
        await asyncio.sleep(self.delay * params.max_tokens)
        ids = [7] * min(3, params.max_tokens)
        text = f"The answer is \\boxed{{4}}. seed={getattr(params, 'seed', None)}"
        if params.output_kind == "cumulative":  # streamed: the text so far, then the rest
            yield SimpleNamespace(prompt_token_ids=prompt["prompt_token_ids"], num_cached_tokens=0, finished=False,
                                  outputs=[output(text[:3], ids[:1], [{7: Logprob(-0.1, 1)}], None)])
        yield SimpleNamespace(
            prompt_token_ids=prompt["prompt_token_ids"],
            num_cached_tokens=0,
            finished=True,
            outputs=[output(text, ids, [{7: Logprob(-0.1, 1)} for _ in ids])],
        )

    async def abort(self, request_ids):
        self.aborted.extend(request_ids)

    def shutdown(self):
        self.shut_down = True


@pytest.fixture
def fake(monkeypatch):
    """A VLLMBackend whose engine is a FakeAsyncLLM (and a stand-in ``vllm`` module that
    only builds SamplingParams)."""
    params_module = SimpleNamespace(RequestOutputKind=SimpleNamespace(FINAL_ONLY="final-only", CUMULATIVE="cumulative"))
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(SamplingParams=lambda **kw: SimpleNamespace(**kw)))
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", params_module)
    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: True)
    engine = FakeAsyncLLM()

    def make(config=None, delay=0.0):
        engine.delay = delay
        backend = VLLMBackend(config or Config(backend="vllm"))
        backend._tokenizer = FakeTokenizer()
        backend._create_engine = lambda: engine
        made.append(backend)
        return backend, engine

    made: list[VLLMBackend] = []
    yield make
    for backend in made:
        backend.close()


def test_one_vllm_request_per_sample_with_derived_seeds_and_one_bos(fake):
    backend, engine = fake()
    reqs = [
        GenerateRequest(prompt="<s>a", params=SamplingParams(max_tokens=5, stop=("\n",), seed=9), n=2),
        GenerateRequest(prompt="b", params=SamplingParams(max_tokens=7), n=1),
    ]
    out = backend.generate(reqs)
    assert [len(x) for x in out] == [2, 1]
    assert [c.text.split("seed=")[1] for c in out[0]] == [str(sample_seed(9, 0)), str(sample_seed(9, 1))]
    sent = {rid: (prompt, params) for rid, prompt, params in engine.requests}
    assert len(sent) == 3 and all(p.n == 1 and p.output_kind == "final-only" for _, p in sent.values())
    prompts = sorted(tuple(prompt["prompt_token_ids"]) for prompt, _ in sent.values())
    assert prompts == [(1, ord("a")), (1, ord("a")), (1, ord("b"))]  # one BOS, written or added
    assert all(p.include_stop_str_in_output for _, p in sent.values())
    assert backend.stats.requests == 2 and backend.stats.sequences == 3


def test_a_continuation_is_sent_as_its_head_encoded_and_the_tokens_sampled(fake):
    backend, engine = fake()
    request = GenerateRequest(prompt="<s>ab\n\n", params=SamplingParams(max_tokens=2), continues=Continuation("<s>a", (98, 10, 10)))
    backend.generate([request])
    ((_, prompt, _),) = engine.requests
    assert prompt["prompt_token_ids"] == [1, ord("a"), 98, 10, 10]  # not the text's ids


def test_streamed_text_reaches_on_text_per_sample(fake):
    backend, engine = fake()
    assert backend.streams_text
    seen = []

    async def main():
        request = GenerateRequest(prompt="x", params=SamplingParams(max_tokens=5, seed=1), n=2)
        return await backend.generate_async(request, on_text=lambda i, text: seen.append((i, text)))

    out = asyncio.run(main())
    for i, completion in enumerate(out):
        texts = [text for j, text in seen if j == i]
        assert texts == ["The", completion.text]
    assert all(p.output_kind == "cumulative" for _, _, p in engine.requests)


def test_a_watch_that_says_stop_aborts_the_sample_and_keeps_it_so_far(fake):
    backend, engine = fake()
    assert backend.watches
    seen = []

    def stop(so_far):
        seen.append((so_far.num_tokens, so_far.finish_reason))
        return True

    request = GenerateRequest(prompt="x", params=SamplingParams(max_tokens=5, seed=1), n=1, watch=Watch(every=1, stop=stop))
    ((out,),) = backend.generate([request])
    assert seen == [(1, "length")]
    assert out.finish_reason == "length" and out.text == "The" and out.num_tokens == 1
    assert len(engine.aborted) == 1 and all(p.output_kind == "cumulative" for _, _, p in engine.requests)


def test_cached_prompt_tokens_come_from_vllms_count(fake):
    backend, engine = fake()
    (out,) = backend.generate([GenerateRequest(prompt="<s>abc", params=SamplingParams(max_tokens=3), n=2)])
    assert [c.prompt_tokens for c in out] == [4, 4] and [c.cached_tokens for c in out] == [0, 0]


def test_runtime_submits_each_request_to_the_continuous_engine(fake):
    backend, engine = fake()
    assert backend.continuous
    config = Config(backend="vllm", search="best-of-n", n=4)
    rt = Runtime(config, backend=backend)
    solutions = rt.solve_many(["What is 2+2?", "And 3+1?"])
    rt.close()
    assert [s.answer for s in solutions] == ["4", "4"]
    assert len(engine.requests) == 8  # 2 tasks x 4 samples, one vLLM request each


def test_requests_resolve_independently(fake):
    backend, _ = fake(delay=0.01)

    async def main():
        start = time.monotonic()
        long = asyncio.ensure_future(backend.generate_async(GenerateRequest(prompt="x", params=SamplingParams(max_tokens=100))))
        await backend.generate_async(GenerateRequest(prompt="y", params=SamplingParams(max_tokens=2)))
        short_done = time.monotonic() - start
        await long
        return short_done, time.monotonic() - start

    short_done, long_done = asyncio.run(main())
    assert short_done < 0.5 < long_done


def test_cancelling_an_await_aborts_its_vllm_requests(fake):
    backend, engine = fake(delay=0.05)

    async def main():
        task = asyncio.ensure_future(backend.generate_async(GenerateRequest(prompt="x", params=SamplingParams(max_tokens=400), n=2)))
        while len(engine.requests) < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    deadline = time.monotonic() + 5
    while len(engine.aborted) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(engine.aborted) == sorted(rid for rid, _, _ in engine.requests)
    assert backend.stats.cancelled == 2


def test_close_fails_what_is_in_flight_and_refuses_more(fake):
    backend, engine = fake(delay=0.05)
    future = backend.submit(GenerateRequest(prompt="x", params=SamplingParams(max_tokens=400)))
    while not engine.requests:
        time.sleep(0.01)
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        future.result(timeout=10)
    assert engine.shut_down and not any(t.name == "reason-vllm" for t in threading.enumerate())
    with pytest.raises(BackendError, match="closed"):
        backend.generate([GenerateRequest(prompt="x")])


def test_a_request_whose_caller_gave_up_fails_quietly_as_the_backend_closes(fake, caplog, capfd):
    """The race SIGTERM hit mid-eval: runs cancel their requests, the backend starts
    closing, and each request's abort returns to find it closed. Its BackendError has no
    reader left; asyncio must not print a traceback for each of them."""
    backend, engine = fake(delay=0.05)
    future = backend.submit(GenerateRequest(prompt="x", params=SamplingParams(max_tokens=400)))
    while not engine.requests:
        time.sleep(0.01)
    backend._closed = True  # close()'s first step, before its shutdown reaches the loop
    future.cancel()
    while not engine.aborted:
        time.sleep(0.01)
    time.sleep(0.1)  # the request's task ends with the BackendError nobody reads
    backend.close()
    del future  # its callbacks hold the task: an unread error is reported when the task is collected
    gc.collect()
    assert "never retrieved" not in capfd.readouterr().err + caplog.text


def test_engine_statistics_feed_stats_and_events(fake):
    backend, _ = fake()
    events = []
    backend.emitter = events.append
    cache = SimpleNamespace(requests=2, queries=300, hits=256)
    backend._record(SimpleNamespace(num_running_reqs=3, num_waiting_reqs=1, prefix_cache_stats=cache), SimpleNamespace(num_generation_tokens=3))
    backend._record(None, None)  # outputs without scheduler stats change nothing
    s = backend.stats
    assert (s.prefix_cache_queries, s.prefix_cache_hits, s.reused_tokens, s.prefill_tokens) == (300, 256, 256, 44)
    assert (s.decode_tokens, s.decode_steps, s.decode_rows, s.waiting_steps) == (3, 1, 3, 1)
    assert s.to_dict()["prefix_cache_hit_rate"] == pytest.approx(256 / 300)
    (step,) = events
    assert isinstance(step, EngineStep) and step.engine == "vllm"
    assert (step.running, step.waiting, step.admitted, step.reused_tokens, step.prefill_tokens) == (3, 1, 2, 256, 44)


def test_bad_options_are_usage_errors(fake):
    with pytest.raises(UsageError, match="tensor_parallel_size"):
        VLLMBackend(Config(backend="vllm", options={"tensor_parallel_size": "two"}))
    with pytest.raises(UsageError, match="gpu_memory_utilization"):
        VLLMBackend(Config(backend="vllm", options={"gpu_memory_utilization": 1.5}))
    with pytest.raises(UsageError, match="dtype"):
        VLLMBackend(Config(backend="vllm", dtype="int3"))
    assert VLLMBackend(Config(backend="vllm", dtype="bf16")).dtype == "bfloat16"


@pytest.mark.parametrize(
    ("cores", "option", "environ", "expected"),
    [
        (2, None, None, {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}),  # a small machine: every core for the model
        (1, None, None, {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}),
        (16, None, None, {}),  # vLLM's own choice
        (2, None, "1", {}),  # the caller's environment wins
        (16, 3, None, {"VLLM_CPU_NUM_OF_RESERVED_CPU": "3"}),  # and the option over both
        (2, 1, "0", {"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}),
    ],
)
def test_on_a_small_cpu_machine_the_model_gets_every_core(fake, monkeypatch, cores, option, environ, expected):
    monkeypatch.setattr(vllm_cpu, "on_cpu", lambda: True)
    monkeypatch.setattr(vllm_cpu, "usable_cores", lambda: cores)
    if environ is None:
        monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    else:
        monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", environ)
    options = {} if option is None else {"reserved_cpus": option}
    backend, _ = fake(Config(backend="vllm", options=options))
    assert backend.engine_env() == expected
    monkeypatch.setattr(vllm_cpu, "on_cpu", lambda: False)
    assert backend.engine_env() == {}  # GPUs: nothing of the kind


@pytest.mark.skipif(HAVE_VLLM, reason="vllm is installed here")
def test_missing_vllm_says_how_to_install():
    with pytest.raises(UsageError, match=r"pip install 'reason-runtime\[vllm\]'"):
        VLLMBackend(Config(backend="vllm"))
    with pytest.raises(UsageError, match="reason-runtime\\[vllm\\]"):
        Runtime(Config(backend="vllm")).backend


# -- the real engine (vllm-cpu in CI, CUDA where there is one) ----------------------------------------

@pytest.fixture(scope="module")
def engine():
    require_vllm()
    # float32, so that logprobs can be compared with the transformers backend's exactly
    # (vLLM's default on CPU is bfloat16: faster, but a few tenths of a nat off).
    backend = VLLMBackend(Config(backend="vllm", seed=0, dtype="float32", options={"max_model_len": 2048, **SMALL}))
    start = time.monotonic()
    backend.load()
    print(f"\nvllm engine started in {time.monotonic() - start:.1f}s")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def runtime(engine):
    """One Runtime on the module's engine; searches override its config per test."""
    rt = Runtime(Config(backend="vllm", seed=0), backend=engine)
    yield rt
    rt.close()


def chat(backend, question: str) -> str:
    return backend.format_prompt([{"role": "user", "content": question}])


@pytest.mark.vllm
def test_real_on_a_small_cpu_machine_the_model_runs_on_every_core(engine):
    """vLLM's CPU build keeps a core from the model for its scheduler; on 2 cores that is
    half the compute, so there the backend gives the model every core."""
    import psutil

    cores = vllm_cpu.usable_cores()
    if not vllm_cpu.on_cpu() or cores > vllm_cpu.SMALL_CPU_CORES:
        pytest.skip(f"not vLLM's CPU build on {vllm_cpu.SMALL_CPU_CORES} cores or fewer (here: {cores} cores)")
    pinned = set()  # the cores the engine's threads are bound to, one each (OpenMP's binding)
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error, OSError):
            for thread in child.threads():
                if len(allowed := os.sched_getaffinity(thread.id)) == 1:
                    pinned |= allowed
    assert pinned == os.sched_getaffinity(0)


@pytest.mark.vllm
def test_real_prompts_reach_vllm_rendered_not_raw(engine):
    """vLLM 0.3x warns that raw prompts are deprecated ("Passing raw prompts to
    InputProcessor") and takes a rendered one, marked with its ``type``, as is."""
    if not hasattr(engine._engine, "renderer"):
        pytest.skip("this vLLM has no renderer: the raw prompt is what it takes")
    prompt = engine_prompt(engine._engine, [1, 2, 3])
    assert prompt["type"] == "token" and list(prompt["prompt_token_ids"]) == [1, 2, 3]


@pytest.mark.vllm
def test_real_stop_strings_logprobs_length_and_eos(engine):
    prompt = chat(engine, "Count from 1 to 20, one number per line.")
    params = SamplingParams(temperature=0.0, max_tokens=40, stop=("\n",), logprobs=3)
    (out,) = engine.generate([GenerateRequest(prompt=prompt, params=params, n=2)])
    for c in out:
        assert c.finish_reason == "stop" and c.text.endswith("\n") and c.text.count("\n") == 1
        assert len(c.logprobs) == c.num_tokens == len(c.top_logprobs) > 0
        assert all(len(t) == 3 and list(t) == sorted(t, reverse=True) for t in c.top_logprobs)
        assert all(abs(lp - t[0]) < 1e-6 for lp, t in zip(c.logprobs, c.top_logprobs))  # greedy: the top choice
        assert c.prompt_tokens == len(engine.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert out[0].text == out[1].text
    (short,) = engine.generate([GenerateRequest(prompt=prompt, params=SamplingParams(max_tokens=2), n=1)])
    assert short[0].finish_reason == "length" and short[0].num_tokens == 2
    (full,) = engine.generate([GenerateRequest(prompt=chat(engine, "Say hi."), params=SamplingParams(temperature=0.0, max_tokens=300))])
    assert full[0].finish_reason == "eos" and full[0].num_tokens < 300


@pytest.mark.vllm
@pytest.mark.parametrize("search", get_registry().names("search"))
def test_real_every_strategy(runtime, search):
    solution = runtime.solve(
        "What is 3 + 4?", search=search, n=2, beam_width=2, max_tokens=48, step_tokens=24, max_steps=2, temperature=0.8
    )
    assert solution.usage.model_calls >= 1 and solution.usage.completion_tokens > 0
    assert solution.usage.prompt_tokens > 0 and solution.candidates
    generated = [n.step for n in solution.tree.nodes if n.step is not None and not n.step.injected]
    assert generated and all(len(s.logprobs) == len(s.token_ids) for s in generated)
    assert any(s.top_logprobs and len(s.top_logprobs[0]) == 5 for s in generated)
    assert all(lp <= 0.0 for s in generated for lp in s.logprobs)


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_real_beam_candidates_do_not_move_with_the_block_size(runtime):
    """The prefix cache only changes what is re-encoded: a beam search on the module's
    engine (blocks of 32 on CPU, 16 on GPU) and on one with blocks of 128 (vLLM's own CPU
    default, which re-encodes far more of each re-sent path) keeps the same candidates."""
    questions = ["Tom has 3 apples and buys 5 more. How many apples does he have?",
                 "A book costs 12 dollars. How much do 4 books cost?"]
    settings = dict(search="beam", n=4, beam_width=2, max_tokens=96, step_tokens=32, temperature=0.8, seed=3)
    fine = runtime.solve_many(questions, **settings)
    coarse_backend = VLLMBackend(Config(backend="vllm", seed=0, dtype="float32",
                                        options={"max_model_len": 2048, **SMALL, "block_size": 128}))
    try:
        with Runtime(Config(backend="vllm", seed=0), backend=coarse_backend) as rt:
            coarse = rt.solve_many(questions, **settings)
    finally:
        coarse_backend.close()
    for a, b in zip(fine, coarse):
        assert [c.text for c in a.candidates] == [c.text for c in b.candidates]
        assert a.usage.encoded_tokens < b.usage.encoded_tokens and a.usage.prompt_tokens == b.usage.prompt_tokens


QUESTIONS = [
    "What is 3 + 4?",
    "Name the capital of France.",
    "Write a haiku about the sea.",
    "List three primary colors.",
    "What is the square root of 81?",
    "Explain what a prime number is.",
]
GREEDY_TOKENS = 12
LOGPROB_TOLERANCE = 0.01
"""nats. Both backends compute in float32 here (measured: at most 0.001 apart; a wrong
template, BOS or logprob mapping moves them by whole nats). With vLLM's default bfloat16
on CPU the same check measured 5/6 identical texts and top-5 logprobs up to 0.72 nats
apart: too loose to catch a mapping bug, which is why the module's engine runs float32."""


@pytest.mark.vllm
def test_real_greedy_text_and_top5_logprobs_agree_with_transformers(engine):
    from reason.plugins.backends.transformers import TransformersBackend

    hf = TransformersBackend(Config(backend="transformers", dtype="float32"))
    params = SamplingParams(temperature=0.0, max_tokens=GREEDY_TOKENS, logprobs=5)
    requests = [GenerateRequest(prompt=chat(hf, q), params=params) for q in QUESTIONS]
    try:
        expected = [cs[0] for cs in hf.generate(requests)]
    finally:
        hf.close()
    got = [cs[0] for cs in engine.generate(requests)]
    same_text = sum(a.text == b.text for a, b in zip(got, expected))
    worst = 0.0
    for a, b in zip(got, expected):
        assert a.token_ids[0] == b.token_ids[0], (a.text, b.text)  # the first token always agrees
        # compare positions up to the first token where bf16 picked otherwise
        agree = next((i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids)) if x != y), min(a.num_tokens, b.num_tokens))
        for i in range(agree):
            worst = max(worst, *(abs(x - y) for x, y in zip(a.top_logprobs[i], b.top_logprobs[i])))
            assert len(a.top_logprobs[i]) == len(b.top_logprobs[i]) == 5
    print(f"\ngreedy: {same_text}/{len(QUESTIONS)} identical {GREEDY_TOKENS}-token texts; worst top-5 logprob difference {worst:.3f}")
    assert same_text >= len(QUESTIONS) - 1  # a near-tie may still flip between kernels
    assert worst < LOGPROB_TOLERANCE


@pytest.mark.vllm
def test_real_concurrent_requests_resolve_independently(engine):
    long_prompt = chat(engine, "Count from 1 to 300, separated by commas.")
    short_prompt = chat(engine, "Say hi.")

    async def main():
        start = time.monotonic()
        long = asyncio.ensure_future(engine.generate_async(GenerateRequest(prompt=long_prompt, params=SamplingParams(temperature=0.0, max_tokens=160))))
        await asyncio.sleep(0.2)
        (short,) = await engine.generate_async(GenerateRequest(prompt=short_prompt, params=SamplingParams(temperature=0.0, max_tokens=3)))
        short_done = time.monotonic() - start
        (done,) = await long
        return short, short_done, done, time.monotonic() - start

    short, short_done, done, long_done = asyncio.run(main())
    assert short.num_tokens == 3 and done.num_tokens == 160
    assert short_done < long_done / 2, (short_done, long_done)


@pytest.mark.vllm
def test_real_seed_gives_the_same_samples_alone_under_load_and_whatever_n(engine):
    prompt = chat(engine, "Tell me a fact about numbers.")
    seeded = SamplingParams(temperature=1.0, max_tokens=16, seed=7)
    (alone,) = engine.generate([GenerateRequest(prompt=prompt, params=seeded, n=3)])
    noise = [
        GenerateRequest(prompt=chat(engine, f"Tell me about number {i}."), params=SamplingParams(temperature=1.0, max_tokens=24), n=2)
        for i in range(4)
    ]
    loaded = engine.generate([*noise[:2], GenerateRequest(prompt=prompt, params=seeded, n=3), *noise[2:]])[2]
    (fewer,) = engine.generate([GenerateRequest(prompt=prompt, params=seeded, n=2)])
    (other,) = engine.generate([GenerateRequest(prompt=prompt, params=SamplingParams(temperature=1.0, max_tokens=16, seed=8), n=3)])
    texts = [c.text for c in alone]
    assert [c.text for c in loaded] == texts
    assert [c.text for c in fewer] == texts[:2]  # sample i's seed depends on i only
    assert len(set(texts)) > 1 and [c.text for c in other] != texts


@pytest.mark.vllm
def test_real_a_burst_of_seeded_prompts_larger_than_one_engine_step(engine):
    """More prompt tokens at once than one step takes (the engine's max_model_len is 2048
    here): vLLM 0.32 on CPU prefilled the last prompt in chunks and then crashed
    ("CPU Generator does not use offset") rewinding its seeded generator. Found by the
    continuous benchmark's 128-sequence burst; the backend turns chunked prefill off on CPU."""
    story = "A train leaves the station at noon and travels east at a steady speed. "
    requests = [
        GenerateRequest(prompt=chat(engine, f"Problem {i}. {story * 5}How far?"), params=SamplingParams(temperature=0.8, max_tokens=4, seed=i))
        for i in range(40)
    ]
    assert sum(len(engine.tokenizer.encode(r.prompt)) for r in requests) > 2 * 2048
    results = engine.generate(requests)
    assert [len(r) for r in results] == [1] * 40
    assert all(r[0].num_tokens >= 1 for r in results)


@pytest.mark.vllm
def test_real_cancel_aborts_the_vllm_request(engine):
    prompt = chat(engine, "Count from 1 to 500, separated by commas.")
    vllm_engine = engine._engine
    cancelled_before = engine.stats.cancelled

    async def main():
        task = asyncio.ensure_future(engine.generate_async(GenerateRequest(prompt=prompt, params=SamplingParams(temperature=0.0, max_tokens=1000), n=2)))
        deadline = time.monotonic() + 60
        while vllm_engine.get_num_unfinished_requests() < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    deadline = time.monotonic() + 10
    while vllm_engine.get_num_unfinished_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert vllm_engine.get_num_unfinished_requests() == 0
    assert engine.stats.cancelled == cancelled_before + 2
    (after,) = engine.generate([GenerateRequest(prompt=chat(engine, "Say hi."), params=SamplingParams(max_tokens=4))])
    assert after[0].num_tokens >= 1  # the engine serves on


@pytest.mark.vllm
def test_real_streamed_text_grows_to_the_completion(engine):
    seen: dict[int, list[str]] = {0: [], 1: []}

    async def main():
        request = GenerateRequest(prompt=chat(engine, "Name three animals."), params=SamplingParams(temperature=0.8, max_tokens=24, seed=5), n=2)
        return await engine.generate_async(request, on_text=lambda i, text: seen[i].append(text))

    out = asyncio.run(main())
    for i, completion in enumerate(out):
        texts = seen[i]
        assert len(texts) >= 2 and texts[-1] == completion.text
        assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]) if not earlier.endswith("\ufffd"))


@pytest.mark.vllm
def test_real_prefix_cache_reuse_shows_in_stats_and_events(runtime, engine):
    events: list[EngineStep] = []
    unsubscribe = runtime.subscribe(lambda e: events.append(e) if isinstance(e, EngineStep) else None)
    # A prompt of several KV blocks (32 tokens each on CPU, 16 on GPU): only whole blocks are cached.
    story = " ".join(f"Step {i}: add {i} apples to the basket." for i in range(60))
    prompt = chat(engine, f"{story}\nHow many apples are in the basket?")
    params = SamplingParams(temperature=0.0, max_tokens=4)
    before = engine.stats.prefix_cache_hits
    engine.generate([GenerateRequest(prompt=prompt, params=params)])
    (second,) = engine.generate([GenerateRequest(prompt=prompt, params=params, n=2)])
    time.sleep(0.5)  # events reach listeners through the runtime's loop
    unsubscribe()
    prompt_tokens = len(engine.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert prompt_tokens > 600
    reused = engine.stats.prefix_cache_hits - before
    assert engine.engine_kwargs()["block_size"] == (16 if cuda() else 32)
    assert reused >= 2 * (prompt_tokens - 32 - 1)  # both samples of the 2nd request reuse all whole blocks
    # the completions say it too (each sample is its own vLLM request, with its own count)
    assert all(prompt_tokens - 32 <= c.cached_tokens < prompt_tokens for c in second)
    assert 0 < engine.stats.prefix_cache_hit_rate <= 1
    assert sum(e.reused_tokens for e in events) >= reused and all(e.engine == "vllm" for e in events)
    assert any(e.running > 0 for e in events)


@pytest.mark.vllm
def test_real_the_next_step_of_a_path_reuses_every_whole_block_the_path_sampled(engine):
    head = chat(engine, "Count from 1 to 60, separated by commas.")
    (first,) = engine.generate([GenerateRequest(head, SamplingParams(temperature=0.0, max_tokens=96))])[0]
    step = GenerateRequest(
        head + first.text, SamplingParams(temperature=0.0, max_tokens=2), continues=Continuation(head, first.token_ids)
    )
    (second,) = engine.generate([step])[0]
    path = len(engine.encode(head)) + len(first.token_ids)
    block = engine.engine_kwargs()["block_size"]
    assert second.prompt_tokens == path
    # the keys of the generated tokens were cached as their blocks filled: all but the
    # path's last partial block (and the last token, which must run) is reused
    assert second.cached_tokens >= (path - 1) // block * block > len(engine.encode(head))


@pytest.mark.vllm
def test_real_a_watch_stops_a_sample_where_it_says_and_its_tokens_do_not_move(engine):
    prompt = chat(engine, "Write a long story about a dragon who learns to fly.")
    params = SamplingParams(temperature=0.8, max_tokens=40, seed=11)
    (full,) = engine.generate([GenerateRequest(prompt=prompt, params=params)])[0]
    assert full.num_tokens == 40  # the story goes on past where the watch stops it
    checked = []

    def stop(so_far):
        checked.append(so_far.num_tokens)
        return so_far.num_tokens >= 16

    (watched,) = engine.generate([GenerateRequest(prompt=prompt, params=params, watch=Watch(every=8, stop=stop))])[0]
    assert checked == [8, 16]  # one token per engine step: each check lands on its multiple
    assert watched.finish_reason == "length" and watched.num_tokens == 16
    assert watched.token_ids == full.token_ids[:16]
    assert full.text.startswith(watched.text)
    (after,) = engine.generate([GenerateRequest(prompt=prompt, params=SamplingParams(max_tokens=4))])
    assert after[0].num_tokens == 4  # the aborted sample left the engine serving


@pytest.mark.vllm
def test_real_bad_model_directory_is_one_clear_line(tmp_path):
    require_vllm()
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    backend = VLLMBackend(Config(backend="vllm", model=str(tmp_path)))
    with pytest.raises(BackendError) as info:
        backend.load()
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message and "model_type" in message
    backend.close()


@pytest.mark.vllm
def test_real_impossible_memory_setting_is_one_clear_line(engine):
    # With the module's engine holding its share, 0.99 of the memory cannot be had (CPU: RAM, GPU: device memory).
    backend = VLLMBackend(Config(backend="vllm", options={"gpu_memory_utilization": 0.99, "max_model_len": 2048}))
    start = time.monotonic()
    with pytest.raises(BackendError) as info:
        backend.load()
    message = str(info.value)
    print(f"\n{message}\n(failed in {time.monotonic() - start:.1f}s)")
    assert "\n" not in message and "memory" in message.lower() and "-o gpu_memory_utilization" in message
    assert "See root cause above" not in message
    backend.close()


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_real_cli_solve_with_the_vllm_backend(engine):
    memory = ["-o", f"gpu_memory_utilization={SMALL['gpu_memory_utilization']}"]
    args = ["solve", "--backend", "vllm", "-o", "max_model_len=1024", *memory, "--search", "beam", "--n", "2", "--beam-width", "2",
            "--max-tokens", "48", "--max-steps", "2", "--seed", "0", "--json", "What is 2 + 3?"]
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", "from reason.cli import main; main()", *args],
        capture_output=True, text=True, timeout=800,
    )
    print(f"\nreason solve --backend vllm: {time.monotonic() - start:.1f}s including the engine start")
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout)  # stdout holds the JSON alone: vLLM logs to stderr
    assert data["usage"]["completion_tokens"] > 0 and data["usage"]["model_calls"] >= 1


def live_processes_in_group(group: int) -> list[str]:
    """The processes of process group ``group`` that still run (zombies left unreaped by
    a container's init are not running), as "pid name"."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # it ended while we looked
            continue
        name, fields = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == group and fields[0] != "Z":
            found.append(f"{stat.parent.name} {name}")
    return found


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_real_sigterm_mid_eval_stops_vllms_processes_and_keeps_the_results(tmp_path):
    require_vllm()
    out = tmp_path / "run"
    args = ["eval", "--backend", "vllm", "-o", "max_model_len=1024", "-o", f"gpu_memory_utilization={SMALL['gpu_memory_utilization']}",
            "--dataset", "multiarith", "--limit", "40", "--n", "2", "--max-tokens", "64", "--seed", "0",
            "--concurrency", "1", "--quiet", "--no-plot", "--out", str(out)]
    log = tmp_path / "eval.log"  # a file, not a pipe: nobody reads vLLM's logs until the end
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from reason.cli import main; main()", *args],
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )
    results = out / "results.jsonl"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None and not (results.exists() and results.read_text().count("\n")):
            time.sleep(0.2)
        assert proc.poll() is None, "the eval ended before it could be terminated"
        assert live_processes_in_group(proc.pid)[1:], "vLLM's engine should run in processes of its own"
        proc.terminate()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "reason: terminated" in output and "--resume" in output
    deadline = time.monotonic() + 30
    while (left := live_processes_in_group(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in (int(p.split()[0]) for p in left):
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after the command ended: {left}"
    lines = results.read_text().splitlines()
    assert lines and all(json.loads(line)["task_id"].startswith("multiarith/") for line in lines)


# -- CUDA only ----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not (HAVE_VLLM and cuda()), reason="needs vllm and a CUDA GPU")
def test_gpu_compiled_engine_and_prm_script(tmp_path):
    """On CUDA: the default engine (CUDA graphs, no enforce_eager) runs a beam search, and
    scripts/prm_vllm_gpu.py runs end to end with vLLM as the policy."""
    backend = VLLMBackend(Config(backend="vllm", seed=0, options={"gpu_memory_utilization": 0.3, "max_model_len": 2048}))
    with Runtime(Config(backend="vllm", search="beam", n=4, max_tokens=64, seed=0, options={"beam": {"width": 2, "max_steps": 3}}), backend=backend) as rt:
        solution = rt.solve("What is 3 + 4?")
    assert solution.usage.completion_tokens > 0 and backend.stats.decode_tokens > 0
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "prm_vllm_gpu.py"), "--policy", "embedded", "--prm", "embedded",
         "--policy-memory", "0.3", "--dataset", "multiarith", "--limit", "2", "--search", "beam", "--n", "4",
         "--max-tokens", "96", "--max-steps", "3"],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["summary"] and summary["problems"] == 2
