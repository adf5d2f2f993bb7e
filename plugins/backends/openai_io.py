"""The ``openai`` backend's own event loop (:class:`HTTPLoop`: the thread its HTTP client
lives on) and shutting it down."""

from __future__ import annotations

import asyncio
from typing import Any

from reason.aio import LoopThread


class HTTPLoop(LoopThread):
    """The backend's own event loop, in a daemon thread, and what is bound to it.

    An ``httpx.AsyncClient`` (like an asyncio lock or semaphore) belongs to the loop it is
    used on, while the backend is called from the runtime's loop (``generate_async``) and
    from plain threads (``generate``): all its HTTP therefore lives on this one loop, and
    callers hand coroutines over with :meth:`submit`.
    """

    def __init__(self, max_concurrency: int) -> None:
        super().__init__("reason-openai")
        self.slots = asyncio.Semaphore(max_concurrency)
        """At most ``max_concurrency`` HTTP requests in flight, from every caller together."""
        self.ready_lock = asyncio.Lock()
        self.client: Any = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closing = False


async def shutdown(io: HTTPLoop) -> None:
    tasks = list(io.tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if io.client is not None:
        await io.client.aclose()
        io.client = None
