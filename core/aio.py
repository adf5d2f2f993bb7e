"""The two asyncio helpers everything shares: an event loop in a thread of its own
(:class:`LoopThread`: the runtime's, the vLLM engine's, the openai backend's HTTP client's),
and running coroutines side by side where the first failure stops the rest
(:func:`gather_all`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """An event loop running in a daemon thread named ``name``, started on creation.
    Other threads hand it coroutines with :meth:`submit` and calls with :meth:`call_soon`;
    :meth:`stop` ends it, and the loop is closed when its thread ends."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), name=name, daemon=True)
        self.thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        try:
            self.loop.run_forever()
        finally:
            try:
                self.loop.run_until_complete(self.loop.shutdown_default_executor())
            finally:
                self.loop.close()

    @property
    def is_current(self) -> bool:
        """Called from the loop's own thread."""
        return threading.current_thread() is self.thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the loop; its result (or error) arrives in the future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` in the loop's thread; nothing once the loop has closed."""
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Stop the loop after the callback it is running, and (from another thread) wait
        up to ``timeout`` for its thread to end. True when it has ended."""
        self.call_soon(self.loop.stop)
        if self.is_current:
            return False
        self.thread.join(timeout)
        return not self.thread.is_alive()


async def gather_all(*aws: Coroutine[Any, Any, T]) -> list[T]:
    """Run coroutines side by side; their results in order. The first failure cancels
    the others and is raised as itself (not as an exception group); cancelling the whole
    cancels every one."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(aw) for aw in aws]
    except BaseExceptionGroup as failure:
        raise failure.exceptions[0] from None
    return [task.result() for task in tasks]
