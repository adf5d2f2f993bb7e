"""The continuous-batching engine on the real embedded model (SmolLM2-135M, CPU).

What must hold whatever else shares the batch: greedy text, seeded samples, and that a
short request admitted next to a long one comes back first. Generations are short so
the module stays quick on 2 cores; the model is loaded once.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from reason import BackendError, Config, GenerateRequest, Runtime, SamplingParams
from reason.plugins.backends import transformers_loop

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def backend():
    from reason.plugins.backends.transformers import TransformersBackend

    b = TransformersBackend(Config(options={"max_batch": 8}))
    b.load()
    yield b
    b.close()


def prompt(backend, question: str) -> str:
    return backend.format_prompt([{"role": "user", "content": question}])


def wait_for(condition, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


QUESTIONS = [
    "What is 12 + 30? Think step by step.",
    "Name three colors.",
    "Write a haiku about rain.",
    "Why is the sky blue?",
    "What is the capital of France?",
]


def load(backend, stagger: float):
    """Sampled requests of varied lengths, submitted a few at a time so some join the
    batch while others are mid-decode (and more than max_batch rows queue up)."""
    futures = []
    for i in range(12):
        params = SamplingParams(temperature=0.9, max_tokens=6 + 3 * (i % 5), seed=100 + i)
        futures.append(backend.submit(GenerateRequest(prompt(backend, QUESTIONS[i % 5]), params, n=1 + i % 2)))
        if i % 4 == 3:
            time.sleep(stagger)
    return futures


def test_greedy_and_seeded_results_do_not_depend_on_the_batch(backend):
    """Checked how: each probe request runs alone, then again while 12 other requests
    (18 sequences, more than max_batch=8) are admitted before, with and after it; the
    token ids must be identical."""
    greedy = GenerateRequest(prompt(backend, QUESTIONS[0]), SamplingParams(temperature=0, max_tokens=24))
    seeded = GenerateRequest(prompt(backend, QUESTIONS[3]), SamplingParams(temperature=1.0, max_tokens=16, seed=7), n=3)
    alone = [backend.generate([request])[0] for request in (greedy, seeded)]

    others = load(backend, stagger=0.0)
    probes = [backend.submit(greedy), backend.submit(seeded)]
    others += load(backend, stagger=0.2)
    loaded = [future.result(timeout=300) for future in probes]
    for future in others:
        future.result(timeout=300)

    for got, want in zip(loaded, alone):
        assert [c.token_ids for c in got] == [c.token_ids for c in want]
        assert [c.text for c in got] == [c.text for c in want]
    assert len({c.token_ids for c in alone[1]}) > 1  # the three seeded samples differ


def test_a_short_request_joins_and_leaves_while_a_long_one_decodes(backend):
    long = backend.submit(GenerateRequest(prompt(backend, QUESTIONS[2]), SamplingParams(temperature=0, max_tokens=96)))
    wait_for(lambda: backend.rows_in_flight == 1)  # the long one is decoding
    steps_before = backend.stats.decode_steps
    short = backend.submit(GenerateRequest(prompt(backend, QUESTIONS[4]), SamplingParams(temperature=0, max_tokens=4)))
    short.result(timeout=120)
    assert not long.done()  # admitted mid-decode, done before the long one
    assert long.result(timeout=300)[0].num_tokens > 4
    assert backend.stats.decode_steps - steps_before > 4


def test_cancelling_frees_the_rows(backend):
    cancelled_before = backend.stats.cancelled
    future = backend.submit(GenerateRequest(prompt(backend, QUESTIONS[1]), SamplingParams(temperature=0.8, max_tokens=400), n=3))
    wait_for(lambda: backend.rows_in_flight == 3)
    assert future.cancel()
    wait_for(lambda: backend.rows_in_flight == 0)
    assert backend.rows_in_flight == 0 and backend.stats.cancelled - cancelled_before == 3
    # and the engine goes on serving
    (done,) = backend.generate([GenerateRequest(prompt(backend, QUESTIONS[4]), SamplingParams(temperature=0, max_tokens=3))])
    assert done[0].num_tokens == 3


def test_threads_calling_solve_share_the_engine(backend):
    """Four threads solve at once on one Runtime: their searches' sequences share decode
    steps (more rows per step than any one search has)."""
    rows_seen = []
    with Runtime(Config(search="best-of-n", n=2, max_tokens=24, verifier="confidence"), backend=backend) as rt:
        rt.subscribe(lambda e: rows_seen.append(e.running) if e.kind == "EngineStep" else None)
        barrier = threading.Barrier(4)
        solutions = []

        def call(q):
            barrier.wait()
            solutions.append(rt.solve(q))

        threads = [threading.Thread(target=call, args=(q,)) for q in QUESTIONS[:4]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    assert len(solutions) == 4 and all(s.usage.completion_tokens > 0 for s in solutions)
    assert max(rows_seen) > 2  # rows of different callers in one step


def test_a_cancelled_search_frees_its_rows(backend):
    with Runtime(Config(search="best-of-n", n=4, max_tokens=400, verifier=None), backend=backend) as rt:

        async def start_then_cancel():
            task = asyncio.create_task(rt.asolve("Count from one to two hundred, in words."))
            for _ in range(3000):
                if backend.rows_in_flight == 4 or task.done():
                    break
                await asyncio.sleep(0.01)
            assert backend.rows_in_flight == 4
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(3000):
                if backend.rows_in_flight == 0:
                    break
                await asyncio.sleep(0.01)

        asyncio.run(start_then_cancel())
    assert backend.rows_in_flight == 0


def test_stream_with_tokens_yields_growing_text(backend):
    with Runtime(Config(search="greedy", max_tokens=12, verifier=None), backend=backend) as rt:

        async def collect():
            run = rt.stream("Name three colors.", tokens=True)
            return [e async for e in run], run.solution

        events, solution = asyncio.run(collect())
        texts = [e.text for e in events if e.kind == "TextGenerated"]
    assert len(texts) >= 2 and all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert texts[-1] == solution.text  # the last delta is the chosen answer's text
    assert events[-1].kind == "SearchFinished"


def test_a_failing_step_fails_every_request_it_held_and_the_engine_goes_on(backend, monkeypatch):
    """A forward pass that raises after newcomers were taken into the batch must fail
    their requests too (not leave them waiting forever)."""
    real = backend.loop._decode

    def flaky(batch, tokens):
        # the first pass with the newcomers in the batch (1 row + 2 samples), whenever the
        # submit below lands (a fixed pass count would miss them if it landed late)
        if len(tokens) >= 3:
            raise RuntimeError("simulated out of memory")
        return real(batch, tokens)

    class BrokenLog:  # a log sink that fails (a closed stream) must not end the loop either
        def warning(self, *args, **kwargs):
            raise ValueError("I/O operation on closed file.")

    monkeypatch.setattr(backend.loop, "_decode", flaky)
    monkeypatch.setattr(transformers_loop, "log", BrokenLog())
    first = backend.submit(GenerateRequest(prompt(backend, QUESTIONS[0]), SamplingParams(temperature=0, max_tokens=200)))
    wait_for(lambda: backend.rows_in_flight == 1)
    joining = backend.submit(GenerateRequest(prompt(backend, QUESTIONS[1]), SamplingParams(temperature=0, max_tokens=40), n=2))
    for future in (first, joining):  # one clear engine error, the cause kept
        with pytest.raises(BackendError, match="a decode step failed: RuntimeError: simulated") as info:
            future.result(timeout=120)
        assert isinstance(info.value.__cause__, RuntimeError)
    monkeypatch.setattr(backend.loop, "_decode", real)
    (done,) = backend.generate([GenerateRequest(prompt(backend, QUESTIONS[4]), SamplingParams(temperature=0, max_tokens=3))])
    assert done[0].num_tokens == 3


def test_a_text_listener_that_raises_does_not_fail_the_batch(backend):
    def broken(sample, text):
        raise RuntimeError("listener gone")

    other = backend.submit(GenerateRequest(prompt(backend, QUESTIONS[2]), SamplingParams(temperature=0, max_tokens=6)))
    streamed = backend.submit(GenerateRequest(prompt(backend, QUESTIONS[3]), SamplingParams(temperature=0, max_tokens=6)), on_text=broken)
    assert streamed.result(timeout=120)[0].num_tokens == 6 and other.result(timeout=120)[0].num_tokens == 6
