"""The ``openai`` backend's own event loop: the thread its HTTP client lives on
(:class:`LoopThread`), shutting it down, and running requests together
(:func:`all_or_first_error`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """The backend's own event loop, in a daemon thread, and what is bound to it.

    An ``httpx.AsyncClient`` (like an asyncio lock or semaphore) belongs to the loop it is
    used on, while the backend is called from the runtime's loop (``generate_async``) and
    from plain threads (``generate``): all its HTTP therefore lives on this one loop, and
    callers hand coroutines over with :meth:`submit`.
    """

    def __init__(self, max_concurrency: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.slots = asyncio.Semaphore(max_concurrency)
        """At most ``max_concurrency`` HTTP requests in flight, from every caller together."""
        self.ready_lock = asyncio.Lock()
        self.client: Any = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closing = False
        self.thread = threading.Thread(target=self._run, name="reason-openai", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            try:
                self.loop.run_until_complete(self.loop.shutdown_default_executor())
            finally:
                self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self, timeout: float | None = 10.0) -> None:
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # already closed
            return
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)


async def shutdown(io: LoopThread) -> None:
    tasks = list(io.tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if io.client is not None:
        await io.client.aclose()
        io.client = None


async def all_or_first_error(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run ``coros`` concurrently; their results in order. The first failure cancels the
    others (dropping their HTTP requests) and is raised; so is a cancellation of the whole."""
    tasks = [asyncio.ensure_future(coro) for coro in coros]
    if not tasks:
        return []
    pending = set(tasks)
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:  # also when this is cancelled: nothing is left running behind it
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return [task.result() for task in tasks]
