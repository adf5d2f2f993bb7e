"""The engines: requests go to their component at once (no global tick); a batch
backend's next call is whatever arrived while it was busy; a continuous backend serves
each request as it comes; every caller of a Runtime shares them."""

import asyncio
import concurrent.futures
import threading
import time

import pytest
from scripted import ContinuousScriptedBackend, ScriptedBackend, steps_script

from reason import (
    Config,
    GenerateRequest,
    Runtime,
    SamplingParams,
    Score,
    SearchOutcome,
    SearchPolicy,
    Task,
    UsageError,
    Verifier,
)
from reason.engine import BatchQueue
from reason.events import SearchFailed, SearchFinished, SearchStarted
from reason.filling import Filling
from reason.registry import get_registry


class FakeBeams(SearchPolicy):
    """B beams, each expanded one step per round for R rounds, as independent children."""

    beams, rounds = 3, 4

    async def run(self, ctx):
        async def beam(i):
            node = ctx.root
            for _ in range(self.rounds):
                (node,) = await ctx.expand(node, 1)
            return node

        leaves = await ctx.gather(*(beam(i) for i in range(self.beams)))
        return SearchOutcome(candidates=[ctx.candidate(leaf) for leaf in leaves], chosen=None)


@pytest.fixture
def beams_registry(monkeypatch):
    registry = get_registry()
    registry.add("search", "test-beams", lambda config, arg: FakeBeams(config, arg), plugin="tests")
    yield registry
    registry.remove("search", "test-beams")


def test_requests_made_together_share_one_backend_call(beams_registry):
    steps = [f"Step {i}.\n\n" for i in range(10)]
    backend = ScriptedBackend(steps_script(steps))
    with Runtime(Config(search="test-beams", verifier=None), backend=backend) as runtime:
        solutions = runtime.solve_many([f"question {i}" for i in range(5)])
    assert len(solutions) == 5
    # 5 searches x 3 beams, 4 rounds, all made in the same event-loop iterations: 4 calls
    # of 15 requests each (a batch backend's next call is everything that arrived).
    assert [len(call) for call in backend.calls] == [15, 15, 15, 15]
    assert all(s.usage.model_calls == 4 for s in solutions)
    assert all(s.tree.max_depth == 4 for s in solutions)


def test_concurrency_bound_still_batches(beams_registry):
    backend = ScriptedBackend(steps_script([f"s{i}\n\n" for i in range(10)]))
    with Runtime(Config(search="test-beams", verifier=None), backend=backend) as runtime:
        runtime.solve_many([f"q{i}" for i in range(4)], concurrency=2)
    # two searches at a time, 3 beams each: every call carries 6 requests
    assert [len(call) for call in backend.calls] == [6] * 8


def test_tasks_started_together_share_a_call():
    backend = ScriptedBackend()
    with Runtime(Config(search="best-of-n", n=3), backend=backend) as runtime:
        runtime.solve_many(["a", "b", "c"])
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 3
    assert sum(r.n for r in backend.calls[0]) == 9


def test_backend_failure_reaches_every_waiting_search():
    class Broken(ScriptedBackend):
        def generate(self, requests):
            raise RuntimeError("out of memory")

    with Runtime(Config(search="best-of-n"), backend=Broken()) as runtime:
        with pytest.raises(RuntimeError, match="out of memory"):
            runtime.solve_many(["a", "b"])


def test_stream_yields_events_in_order():
    runtime = Runtime(Config(search="best-of-n", n=2), backend=ScriptedBackend())

    async def collect():
        run = runtime.stream("2+2?")
        return [event async for event in run], run.solution

    events, solution = asyncio.run(collect())
    kinds = [e.kind for e in events]
    assert kinds[0] == "SearchStarted" and kinds[-1] == "SearchFinished"
    # a stream carries its own search's events (engine-wide ones go to subscribers)
    assert "StepsGenerated" in kinds and "StepsScored" in kinds and kinds.count("AnswerFound") == 2
    assert "BackendCalled" not in kinds and {e.task_id for e in events} == {"task-0"}
    assert solution.answer == "4" and solution.chosen_node.text() == solution.text
    finished = events[-1]
    assert finished.usage.completion_tokens > 0 and finished.to_dict()["usage"]["model_calls"] == 1
    runtime.close()


class FirstCallWaits:
    """A batch function that records its calls and holds the first until ``release``."""

    def __init__(self, result):
        self.result = result
        self.release = threading.Event()
        self.calls = []

    def __call__(self, payloads):
        self.calls.append(list(payloads))
        if len(self.calls) == 1:
            self.release.wait(5)
        return [self.result(p) for p in payloads]


def test_batch_queue_next_call_is_what_arrived_while_busy():
    fn = FirstCallWaits(lambda p: p * 10)

    async def main():
        queue = BatchQueue(fn, name="test")
        first = asyncio.create_task(queue.submit(1))
        await asyncio.sleep(0.05)  # the first call is running now
        later = [asyncio.create_task(queue.submit(p)) for p in (2, 3, 4)]
        cancelled = asyncio.create_task(queue.submit(5))
        await asyncio.sleep(0.05)
        cancelled.cancel()  # its caller gave up before its call started: dropped
        fn.release.set()
        results = await asyncio.gather(first, *later)
        queue.close()
        return results

    assert asyncio.run(main()) == [10, 20, 30, 40]
    assert fn.calls == [[1], [2, 3, 4]]


def test_batch_queue_limit_takes_requests_in_order_and_a_large_one_alone():
    fn = FirstCallWaits(len)

    async def main():
        queue = BatchQueue(fn, name="test", limit=4, size=len)
        first = asyncio.create_task(queue.submit("a"))
        await asyncio.sleep(0.05)  # the first call is running now
        later = []
        for payload in ("bb", "cc", "d", "eeeeee", "f"):  # sizes 2, 2, 1, 6, 1
            later.append(asyncio.create_task(queue.submit(payload)))
            await asyncio.sleep(0)  # in this order
        await asyncio.sleep(0.05)
        fn.release.set()
        results = await asyncio.gather(first, *later)
        queue.close()
        return results

    assert asyncio.run(main()) == [1, 2, 2, 1, 6, 1]
    assert fn.calls == [["a"], ["bb", "cc"], ["d"], ["eeeeee"], ["f"]]


class SlowAndFast(SearchPolicy):
    """Task "slow" makes one long request; any other task makes five short rounds."""

    async def run(self, ctx):
        node = ctx.root
        rounds = 1 if ctx.task.question == "slow" else 5
        for _ in range(rounds):
            (node,) = await ctx.generate(node, 1, SamplingParams(max_tokens=50 if rounds == 1 else 2, stop=("\n\n",)))
        return SearchOutcome(candidates=[ctx.candidate(node)], chosen=None)


@pytest.fixture
def slow_fast_registry():
    registry = get_registry()
    registry.add("search", "test-slow-fast", lambda config, arg: SlowAndFast(config, arg), plugin="tests")
    yield registry
    registry.remove("search", "test-slow-fast")


def test_no_global_tick_a_fast_search_runs_rounds_while_a_slow_one_decodes(slow_fast_registry):
    steps = [f"Step {i}.\n\n" for i in range(10)]
    backend = ContinuousScriptedBackend(steps_script(steps))
    finished = []
    with Runtime(Config(search="test-slow-fast", verifier=None), backend=backend) as rt:
        rt.solve_many(["slow", "fast"], on_solution=lambda s: finished.append((s.task.question, time.perf_counter())))
    assert [q for q, _ in finished] == ["fast", "slow"]
    slow = [entry for entry in backend.log if entry[0].endswith("slow\n<assistant>")]
    fast = [entry for entry in backend.log if "fast" in entry[0]]
    assert len(slow) == 1 and len(fast) == 5
    # all five rounds of the fast search started and ended while the slow request ran
    (_, slow_start, slow_end) = slow[0]
    assert all(slow_start <= start and end <= slow_end for _, start, end in fast)


def test_many_threads_share_one_engine():
    class Slow(ScriptedBackend):
        def generate(self, requests):
            time.sleep(0.3)  # long enough for every thread to submit meanwhile
            return super().generate(requests)

    backend = Slow()
    with Runtime(Config(search="greedy", verifier=None), backend=backend) as rt:
        barrier = threading.Barrier(8)
        answers = []

        def call(i):
            barrier.wait()
            answers.append(rt.solve(f"question {i}").answer)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert answers == ["4"] * 8
    # eight solves, one engine: the requests rode on at most two calls (the first call
    # may start before every thread has submitted; the rest join the next one)
    assert sum(len(call) for call in backend.calls) == 8 and len(backend.calls) <= 2


def test_cancelling_a_search_frees_its_slot():
    backend = ContinuousScriptedBackend(delay=lambda request: 30.0)
    with Runtime(Config(search="best-of-n", n=3, verifier=None), backend=backend) as rt:

        async def start_then_cancel():
            task = asyncio.create_task(rt.asolve("never finishes"))
            while backend.in_flight < 1:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(100):  # cancellation crosses into the runtime's thread
                if backend.in_flight == 0:
                    break
                await asyncio.sleep(0.01)

        asyncio.run(start_then_cancel())
        assert backend.cancelled == 1 and backend.in_flight == 0
        # the engine still serves the next caller
        backend.delay = lambda request: 0.0
        assert rt.solve("2+2?").answer == "4"


def test_concurrent_streams_each_hold_their_own_solution():
    runtime = Runtime(Config(search="best-of-n", n=2), backend=ScriptedBackend())

    async def both():
        first, second = runtime.stream(Task(question="2+2?", id="a")), runtime.stream(Task(question="2+2?", id="b"))
        with pytest.raises(UsageError, match="has not finished"):
            first.solution  # noqa: B018
        solutions = await asyncio.gather(first.result(), second.result())
        return first, second, solutions

    first, second, solutions = asyncio.run(both())
    assert [s.task.id for s in solutions] == ["a", "b"]
    assert first.solution is solutions[0] and second.solution is solutions[1] and first.done
    # the solution names its node: the end of the chosen path, whose text it is
    node = solutions[0].chosen_node
    assert node is not None and node.id == solutions[0].node_id == solutions[0].tree.chosen
    assert solutions[0].to_dict()["node_id"] == node.id
    runtime.close()


def test_a_stream_closed_early_cancels_its_search():
    backend = ContinuousScriptedBackend(delay=lambda request: 30.0)
    with Runtime(Config(search="best-of-n", n=2, verifier=None), backend=backend) as rt:

        async def first_event_then_leave():
            stream = rt.stream("q")
            event = await anext(stream)
            while backend.in_flight < 1:
                await asyncio.sleep(0.01)
            await stream.aclose()
            for _ in range(100):
                if backend.in_flight == 0:
                    break
                await asyncio.sleep(0.01)
            return event

        assert asyncio.run(first_event_then_leave()).kind == "SearchStarted"
        assert backend.cancelled == 1 and backend.in_flight == 0


def test_solutions_arrive_as_each_search_finishes():
    # four tasks, concurrency 2, one task much slower: the quick ones are delivered first,
    # and a new task starts as soon as a slot frees (not when the slow one is done)
    backend = ContinuousScriptedBackend(delay=lambda request: 1.0 if "slow" in request.prompt else 0.02)
    order = []
    with Runtime(Config(search="greedy", verifier=None), backend=backend) as rt:
        rt.solve_many(["slow", "a", "b", "c"], concurrency=2, on_solution=lambda s: order.append(s.task.question))
    assert order == ["a", "b", "c", "slow"]


def test_usage_counts_requests_made_together_once(beams_registry):
    backend = ContinuousScriptedBackend(steps_script([f"Step {i}.\n\n" for i in range(10)]), delay=lambda r: 0.0)
    with Runtime(Config(search="test-beams", verifier=None), backend=backend) as rt:
        (solution,) = rt.solve_many(["q"])
    # three beams per round, four rounds; the beams of a round resume together
    assert solution.usage.sequences == 12 and solution.usage.model_calls == 4


def test_generate_request_direct():
    backend = ContinuousScriptedBackend(delay=lambda r: 0.0)
    (completion,) = asyncio.run(backend.generate_async(GenerateRequest(prompt="x", n=1)))
    assert completion.text and backend.continuous and not ScriptedBackend().continuous


class RowsBackend(ContinuousScriptedBackend):
    """A continuous scripted engine that says how many rows it decodes together."""

    def __init__(self, rows, **kwargs):
        super().__init__(delay=lambda request: 0.05, **kwargs)
        self._rows = rows

    @property
    def rows(self):
        return self._rows


@pytest.mark.parametrize(
    ("rows", "search", "options", "expected"),
    [
        (8, "best-of-n", {}, 4),  # 2 x 8 rows / 4 samples
        (8, "greedy", {}, 8),  # 2 x 8 / 1, at most the rows
        (12, "best-of-n", {}, 6),
        (8, "mcts", {"expansion_width": 2}, 8),  # one expansion of 2 at a time: 2 x 8 / 2
        (12, "deepconf", {}, 12),  # 2 warm-up traces, then the 2 online ones: 2 x 12 / 2
        (12, "deepconf", {"warmup": 1}, 8),  # 1, then 3: 2 x 12 / 3
        (None, "best-of-n", {}, 16),  # an engine that does not say: the default
    ],
)
def test_problems_in_flight_are_sized_from_the_engines_rows_and_the_searchs_width(rows, search, options, expected):
    backend = RowsBackend(rows)
    with Runtime(Config(search=search, n=4, verifier=None, options=options), backend=backend) as rt:
        assert rt.concurrency_for() == expected
        if search == "best-of-n":  # one request per search: at most that many in flight
            rt.solve_many([f"q{i}" for i in range(20)])
            assert backend.most_in_flight == min(expected, 20)


def searches_at_once(runtime):
    """The most searches the runtime had running at once, as its events tell (a list that
    fills in as it runs)."""
    running, most = [0], [0]

    def count(event):
        if isinstance(event, SearchStarted):
            running[0] += 1
            most[0] = max(most[0], running[0])
        elif isinstance(event, (SearchFinished, SearchFailed)):
            running[0] -= 1

    runtime.subscribe(count)
    return most


@pytest.mark.parametrize("concurrency", [None, 8])
def test_idle_rows_start_more_problems_unless_the_caller_named_a_number(concurrency):
    """DeepConf@8 is 6 wide (its online phase) but holds 2 rows through its warm-up: 8
    problems in flight (2 x 24 / 6) leave 8 of 24 rows idle, room for one more."""
    backend = RowsBackend(24)
    with Runtime(Config(search="deepconf", n=8, verifier=None), backend=backend) as rt:
        filling = rt.filling_for()
        assert (filling.floor, filling.ceiling, filling.width) == (8, 24, 6)
        most = searches_at_once(rt)
        solutions = rt.solve_many([f"q{i}" for i in range(30)], concurrency=concurrency)
    assert len(solutions) == 30 and all(s.candidates for s in solutions)
    if concurrency is None:
        assert 8 < most[0] <= 24, most
    else:
        assert most[0] == 8


def test_a_slow_verifier_holds_problems_in_flight_to_the_floor():
    """Best-of-4 on 24 rows: 12 problems in flight (2 x 24 / 4). Their samples come back
    at once and then wait for the verifier, leaving every row idle: more problems would
    only queue behind it, so none beyond the 12 start."""

    class Slow(Verifier):
        def score(self, requests):
            time.sleep(0.05)
            return [Score(step_scores=[0.5] * len(r.steps)) for r in requests]

    registry = get_registry()
    registry.add("verifier", "test-slow", Slow, plugin="tests")
    try:
        with Runtime(Config(search="best-of-n", n=4, verifier="test-slow"), backend=RowsBackend(24)) as rt:
            assert rt.filling_for().floor == 12
            most = searches_at_once(rt)
            solutions = rt.solve_many([f"q{i}" for i in range(40)])
    finally:
        registry.remove("verifier", "test-slow")
    assert len(solutions) == 40 and most[0] == 12


def test_a_stop_waits_for_one_verifier_call_of_at_most_its_max_batch():
    """Twelve best-of-4 problems' paths wait for a verifier that takes 4 at a time: the
    call running when the runtime closes scored one problem's 4, and no other starts."""
    started, release = threading.Event(), threading.Event()
    calls = []

    class Blocking(Verifier):
        max_batch = 4

        def score(self, requests):
            calls.append(len(requests))
            started.set()
            release.wait(10)
            return [Score(step_scores=[0.5] * len(r.steps)) for r in requests]

    registry = get_registry()
    registry.add("verifier", "test-blocking", Blocking, plugin="tests")
    rt = Runtime(Config(search="best-of-n", n=4, verifier="test-blocking"), backend=RowsBackend(24))

    def solve():
        with pytest.raises(concurrent.futures.CancelledError):  # the close cancels them
            rt.solve_many([f"q{i}" for i in range(12)])

    try:
        worker = threading.Thread(target=solve, daemon=True)
        worker.start()
        assert started.wait(10)
        time.sleep(0.2)  # every problem's paths have come back and wait for the verifier
        assert rt._engines.verifying == 48
        threading.Timer(0.2, release.set).start()
        rt.close()
        worker.join(10)
    finally:
        release.set()
        registry.remove("verifier", "test-blocking")
    assert calls == [4]


def test_filling_hears_each_problems_first_request_once(monkeypatch):
    """What lets a narrow first request (DeepConf's warm-up) free the rest of its
    problem's rows for another problem."""
    heard = []
    real = Filling.engine_changed
    monkeypatch.setattr(
        Filling, "engine_changed", lambda self, n, opening=False: heard.append((n, opening)) or real(self, n, opening)
    )
    with Runtime(Config(search="deepconf", n=8, verifier=None), backend=RowsBackend(24)) as rt:
        rt.solve_many([f"q{i}" for i in range(5)])
    openings = [n for n, opening in heard if opening]
    assert openings == [2] * 5  # each problem's first request: its 2 warm-up traces
    assert sum(n for n, _ in heard) == 0  # and every sequence came back


def test_usage_counts_the_prompt_tokens_each_sample_encoded():
    backend = ScriptedBackend()  # says nothing of a prefix cache: every sample encodes its prompt
    with Runtime(Config(search="best-of-n", n=4, verifier=None), backend=backend) as rt:
        (solution,) = rt.solve_many(["What is 2+2?"])
    usage = solution.usage
    assert usage.prompt_tokens > 0 and usage.encoded_tokens == 4 * usage.prompt_tokens
    assert usage.to_dict()["encoded_tokens"] == usage.encoded_tokens


def test_one_validation_and_one_policy_build_per_solve(monkeypatch):
    """A solve checks its config once (a later solve with an equal config not at all) and
    builds its search policy once; solve_many builds one per task."""
    built = []
    registry = get_registry()
    registry.add("search", "test-counted", lambda config, arg: built.append(1) or FakeBeams(config, arg), plugin="tests")
    checks = []
    real_check = Runtime._check
    monkeypatch.setattr(Runtime, "_check", lambda self, *a: checks.append(a) or real_check(self, *a))
    try:
        backend = ScriptedBackend(steps_script([f"Step {i}.\n\n" for i in range(10)]))
        with Runtime(Config(search="test-counted", verifier=None), backend=backend) as runtime:
            assert (len(checks), len(built)) == (1, 1)  # the runtime's own config, checked on creation
            runtime.solve("q")
            assert (len(checks), len(built)) == (1, 1)  # the first solve takes the checked policy
            runtime.solve("q")
            assert (len(checks), len(built)) == (1, 2)
            runtime.solve("q", n=3)  # another config: one check, whose policy that solve runs
            assert (len(checks), len(built)) == (2, 3)
            runtime.solve_many(["a", "b", "c"])
            assert (len(checks), len(built)) == (2, 6)
    finally:
        registry.remove("search", "test-counted")
