"""The scheduler batches every pending request of every running search into one call."""

import asyncio

import pytest
from scripted import ScriptedBackend, steps_script

from reason import Config, Runtime, SearchOutcome, SearchPolicy
from reason.registry import Registration, get_registry
from reason.scheduler import Scheduler


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
    registry.components["search"]["test-beams"] = Registration(
        "test-beams", lambda config, arg: FakeBeams(config, arg), "tests"
    )
    yield registry
    registry.components["search"].pop("test-beams")


def test_one_backend_call_per_tick_across_searches_and_beams(beams_registry):
    steps = [f"Step {i}.\n\n" for i in range(10)]
    backend = ScriptedBackend(steps_script(steps))
    runtime = Runtime(Config(search="test-beams", verifier=None), backend=backend)
    solutions = runtime.solve_many([f"question {i}" for i in range(5)])
    assert len(solutions) == 5
    # 5 searches x 3 beams, 4 rounds: exactly 4 ticks, each with all 15 requests.
    assert [len(call) for call in backend.calls] == [15, 15, 15, 15]
    assert all(s.usage.model_calls == 4 for s in solutions)
    assert all(s.tree.max_depth == 4 for s in solutions)


def test_concurrency_bound_still_batches(beams_registry):
    backend = ScriptedBackend(steps_script([f"s{i}\n\n" for i in range(10)]))
    runtime = Runtime(Config(search="test-beams", verifier=None), backend=backend)
    runtime.solve_many([f"q{i}" for i in range(4)], concurrency=2)
    # two searches at a time, 3 beams each: every call carries 6 requests
    assert [len(call) for call in backend.calls] == [6] * 8


def test_tasks_of_different_lengths_share_ticks_until_they_finish():
    backend = ScriptedBackend()
    runtime = Runtime(Config(search="best-of-n", n=3), backend=backend)
    runtime.solve_many(["a", "b", "c"])
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 3
    assert sum(r.n for r in backend.calls[0]) == 9


def test_backend_failure_reaches_every_waiting_search():
    class Broken(ScriptedBackend):
        def generate(self, requests):
            raise RuntimeError("out of memory")

    runtime = Runtime(Config(search="best-of-n"), backend=Broken())
    with pytest.raises(RuntimeError, match="out of memory"):
        runtime.solve_many(["a", "b"])


def test_gather_children_share_a_tick():
    calls = []

    class Backend:
        def generate(self, requests):
            calls.append(len(requests))
            return [[] for _ in requests]

    async def main():
        scheduler = Scheduler(backend_factory=lambda: Backend(), emit=lambda e: None)
        loop = asyncio.create_task(scheduler.run())
        scheduler.join(1)

        class Req:
            n = 0

        async def child():
            await asyncio.sleep(0)  # children reach their await at different times
            return await scheduler.generate(None, Req())

        await scheduler.gather(*(child() for _ in range(5)))
        scheduler.leave()
        loop.cancel()

    asyncio.run(main())
    assert calls == [5]


def test_stream_yields_events_in_order():
    runtime = Runtime(Config(search="best-of-n", n=2), backend=ScriptedBackend())

    async def collect():
        return [event async for event in runtime.stream("2+2?")]

    events = asyncio.run(collect())
    kinds = [e.kind for e in events]
    assert kinds[0] == "SearchStarted" and kinds[-1] == "SearchFinished"
    assert "BackendCalled" in kinds and "StepsScored" in kinds and kinds.count("AnswerFound") == 2
    assert runtime.last_solution.answer == "4"
    finished = events[-1]
    assert finished.usage.completion_tokens > 0 and finished.to_dict()["usage"]["model_calls"] == 1
