"""One search in progress: what :meth:`Runtime.stream <reason.Runtime.stream>` returns.

::

    async with runtime.stream("What is 7 * 6?") as run:
        async for event in run:
            print(event.kind)
    print(run.solution.answer)

or ``solution = await runtime.stream(task).result()`` to wait without looking. Each run
holds its own solution: concurrent streams never see each other's.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from .errors import UsageError
from .events import Event

if TYPE_CHECKING:
    from .result import Solution


class Run:
    """Iterate it for the search's events as they happen; the last is
    :class:`~reason.events.SearchFinished`, and :attr:`solution` is then set. Closing
    the run before that (``aclose()``, or leaving ``async with``) cancels the search."""

    def __init__(self, events: AsyncGenerator[Event | Solution, None]) -> None:
        self._events = events
        self._solution: Solution | None = None

    @property
    def done(self) -> bool:
        """The search has finished and :attr:`solution` is set."""
        return self._solution is not None

    @property
    def solution(self) -> Solution:
        """The search's solution, once its events have all been read."""
        if self._solution is None:
            raise UsageError("this run has not finished: read its events (or await run.result()) first")
        return self._solution

    async def result(self) -> Solution:
        """Read (and drop) the events still to come, then return the solution."""
        async for _ in self:
            pass
        return self.solution

    def __aiter__(self) -> Run:
        return self

    async def __anext__(self) -> Event:
        if self._solution is not None:
            raise StopAsyncIteration
        item = await self._events.__anext__()
        if isinstance(item, Event):
            return item
        # The source ends with the solution itself, after the last event.
        self._solution = item
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop reading; a search still running is cancelled."""
        await self._events.aclose()

    async def __aenter__(self) -> Run:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
