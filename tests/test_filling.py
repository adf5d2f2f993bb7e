"""Filling: when solve_many starts the next problem (floor at once, more for idle rows)."""

import asyncio

from reason.filling import Filling


class Engine:
    """Rows and the sequences asked of them, telling a Filling as they change."""

    def __init__(self, rows: int) -> None:
        self.rows, self.sequences = rows, 0
        self.filling: Filling | None = None

    def spare(self) -> int:
        return self.rows - self.sequences

    def ask(self, n: int, opening: bool = False) -> None:
        """A request of ``n`` sequences; ``opening``: its problem's first."""
        self.sequences += n
        self.filling.engine_changed(n, opening)

    def give_back(self, n: int) -> None:
        self.sequences -= n
        self.filling.engine_changed(-n)


def filling_on(engine: Engine, **kwargs) -> Filling:
    engine.filling = Filling(spare=engine.spare, **kwargs)
    return engine.filling


def started(filling: Filling, problems: int) -> tuple[list[asyncio.Task], list[int]]:
    """``problems`` waiting to enter, in order; the list of those let in, in order."""
    order: list[int] = []

    async def one(i: int) -> None:
        await filling.enter()
        order.append(i)

    return [asyncio.ensure_future(one(i)) for i in range(problems)], order


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def finish(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_the_floor_starts_at_once_and_the_next_when_one_leaves():
    async def main():
        filling = Filling(floor=2, ceiling=2, width=4, spare=lambda: 100)  # idle rows, but a caller's exact number
        tasks, order = started(filling, 4)
        await settle()
        assert order == [0, 1] and filling.running == 2
        filling.engine_changed(-4)  # a request came back: nothing changes at the ceiling
        await settle()
        assert order == [0, 1]
        filling.leave()
        await settle()
        assert order == [0, 1, 2]
        for _ in range(3):
            filling.leave()
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3]

    asyncio.run(main())


def test_problems_just_started_do_not_look_like_idle_rows():
    async def main():
        engine = Engine(rows=16)
        filling = filling_on(engine, floor=2, ceiling=10, width=4)
        tasks, order = started(filling, 6)
        await settle()
        # 16 rows idle, but the two started problems promised 8 of them: 8 hold 2 more
        assert order == [0, 1, 2, 3]
        for _ in range(4):  # their first requests arrive, each at full width: nothing new is idle
            engine.ask(4, opening=True)
        await settle()
        assert order == [0, 1, 2, 3]
        await finish(tasks)

    asyncio.run(main())


def test_a_first_request_narrower_than_the_width_leaves_rows_for_another_problem():
    """DeepConf@8: 6 wide online, but its warm-up asks for 2."""

    async def main():
        engine = Engine(rows=16)
        filling = filling_on(engine, floor=2, ceiling=10, width=6)
        tasks, order = started(filling, 6)
        await settle()
        assert order == [0, 1]  # 16 rows - 2 x 6 promised: 4 idle, less than a problem
        engine.ask(2, opening=True)  # 14 - 6 promised: 8 idle, one more (promising 6)
        await settle()
        assert order == [0, 1, 2]
        engine.ask(2, opening=True)  # 12 - 6: one more
        await settle()
        assert order == [0, 1, 2, 3]
        engine.ask(2, opening=True)  # 10 - 6: 4 idle
        await settle()
        assert order == [0, 1, 2, 3]
        engine.ask(2, opening=True)  # 8 - 0: one more
        engine.ask(6)  # a problem's online traces, not a first request: nothing moves
        await settle()
        assert order == [0, 1, 2, 3, 4]
        await finish(tasks)

    asyncio.run(main())


def test_a_problem_that_never_asked_gives_back_its_promise_when_it_leaves():
    async def main():
        engine = Engine(rows=8)
        filling = filling_on(engine, floor=1, ceiling=4, width=4)
        tasks, order = started(filling, 3)
        await settle()
        assert order == [0, 1]  # 8 rows: the first's promise leaves room for one more
        filling.leave(asked=False)  # the first ended without a request
        await settle()
        assert order == [0, 1, 2]
        await finish(tasks)

    asyncio.run(main())


def test_idle_rows_for_a_whole_problem_start_one_more():
    async def main():
        engine = Engine(rows=16)
        filling = filling_on(engine, floor=2, ceiling=10, width=4)
        engine.sequences = 16  # another caller's work fills the rows
        tasks, order = started(filling, 6)
        await settle()
        assert order == [0, 1]  # the floor, however busy the engine
        engine.ask(4, opening=True)  # they ask for their rows (they wait in the engine's queue)
        engine.ask(4, opening=True)
        engine.give_back(3)  # 3 come back: 24 - 3 asked of 16 rows, none idle
        await settle()
        assert order == [0, 1]
        engine.give_back(12)  # 7 idle rows hold one problem of 4, not two
        await settle()
        assert order == [0, 1, 2]
        engine.ask(4, opening=True)
        engine.give_back(9)  # now 16 - 0 asked: 12 idle, 4 promised to nobody, 3 problems' worth
        await settle()
        assert order == [0, 1, 2, 3, 4, 5]
        await finish(tasks)

    asyncio.run(main())


def test_the_ceiling_holds_however_idle_the_engine():
    async def main():
        filling = Filling(floor=1, ceiling=3, width=1, spare=lambda: 1000)
        tasks, order = started(filling, 5)
        await settle()
        assert order == [0, 1, 2]
        filling.engine_changed(-1)
        await settle()
        assert order == [0, 1, 2]
        filling.leave()
        await settle()
        assert order == [0, 1, 2, 3]
        await finish(tasks)

    asyncio.run(main())


def test_an_engine_that_does_not_say_its_rows_gets_the_floor():
    async def main():
        filling = Filling(floor=2, ceiling=8, width=1, spare=None)
        tasks, order = started(filling, 3)
        await settle()
        filling.engine_changed(-1)
        await settle()
        assert order == [0, 1]
        filling.leave()
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2]

    asyncio.run(main())


def test_a_problem_cancelled_while_it_waits_gives_its_turn_to_the_next():
    async def main():
        filling = Filling(floor=1, ceiling=1, width=1)
        tasks, order = started(filling, 3)
        await settle()
        tasks[1].cancel()
        await settle()
        filling.leave()
        await settle()
        assert order == [0, 2] and filling.running == 1

    asyncio.run(main())


def test_a_problem_cancelled_as_its_turn_comes_frees_the_place():
    async def main():
        filling = Filling(floor=1, ceiling=1, width=1)
        tasks, order = started(filling, 3)
        await settle()
        filling.leave()  # problem 1's turn is set ...
        tasks[1].cancel()  # ... and it is cancelled before it runs
        await settle()
        assert order == [0, 2] and filling.running == 1

    asyncio.run(main())


def test_no_more_problems_start_for_idle_rows_while_paths_wait_for_a_verifier():
    async def main():
        engine = Engine(rows=16)
        verifying = [8]  # a step search's paths being scored: its rows are idle meanwhile
        filling = filling_on(engine, floor=2, ceiling=10, width=4, verifying=lambda: verifying[0])
        tasks, order = started(filling, 4)
        await settle()
        assert order == [0, 1]  # the floor, verifier or not
        engine.ask(4, opening=True)
        engine.ask(4, opening=True)
        engine.give_back(8)  # every row idle, but for the verifier
        await settle()
        assert order == [0, 1]
        verifying[0] = 0
        filling.engine_changed(0)  # the verifier scored its last waiting path
        await settle()
        assert order == [0, 1, 2, 3]  # now the idle rows are free: 16 hold two more problems of 4
        await finish(tasks)

    asyncio.run(main())
