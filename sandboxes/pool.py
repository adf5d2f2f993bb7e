"""The warm pool: containers created and started ahead of need.

It holds either fresh single-use containers (``Sandbox()``: every run gets a new
filesystem, process tree and environment, and the container is thrown away afterwards)
or reusable workers (``Sandbox(reuse=True)``: a supervisor in the container resets it
between programs, see :mod:`~reason.sandboxes.worker`). Either way creation is off the
critical path, and removal happens in a background thread, also off it.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from reason.log import get_logger

T = TypeVar("T")
"""What the pool holds: a container id, or a :class:`~reason.sandboxes.worker.Worker`."""


class WarmPool(Generic[T]):
    """Keeps up to ``size`` started containers waiting for a program.

    ``take()`` never blocks: it returns a ready container id, or ``None`` when the pool is
    empty (the caller then starts one itself). A refill thread tops the pool up after
    every take; another thread removes used containers.
    """

    def __init__(
        self,
        create: Callable[[], T],
        remove: Callable[[T], None],
        size: int,
        fillers: int = 2,
    ) -> None:
        self._create = create
        self._remove = remove
        self.size = size
        self._ready: collections.deque[T] = collections.deque()
        self._creating = 0
        self._trash: collections.deque[T] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self._threads = [
            threading.Thread(target=self._fill, name=f"sandbox-pool-fill-{i}", daemon=True) for i in range(max(1, fillers))
        ]
        self._threads.append(threading.Thread(target=self._sweep_trash, name="sandbox-pool-remove", daemon=True))
        for thread in self._threads:
            thread.start()

    def take(self) -> T | None:
        with self._cond:
            if self._ready:
                self.hits += 1
                container_id = self._ready.popleft()
                self._cond.notify_all()
                return container_id
            self.misses += 1
            self._cond.notify_all()
            return None

    def discard(self, container_id: T) -> None:
        """Queue a used (or broken) container for removal in the background."""
        with self._cond:
            if not self._closed:
                self._trash.append(container_id)
                self._cond.notify_all()
                return
        self._remove_quietly(container_id)

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Block until the pool is full (benchmarks and tests); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._closed or len(self._ready) >= self.size, timeout=timeout)

    @property
    def ready(self) -> int:
        return len(self._ready)

    def close(self) -> None:
        """Stop refilling and remove every container the pool still holds."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=60)
        with self._cond:
            leftovers = list(self._ready) + list(self._trash)
            self._ready.clear()
            self._trash.clear()
        for container_id in leftovers:
            self._remove_quietly(container_id)

    # -- threads --------------------------------------------------------------------

    def _fill(self) -> None:
        failures = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or len(self._ready) + self._creating < self.size)
                if self._closed:
                    return
                self._creating += 1
            container_id = None
            try:
                container_id = self._create()
                failures = 0
            except Exception as exc:  # the engine hiccuped: back off, callers fall back to cold starts
                failures += 1
                self.errors += 1
                get_logger().warning("sandbox pool could not start a container", error=str(exc))
            finally:
                with self._cond:
                    self._creating -= 1
                    closed = self._closed
                    if container_id is not None and not closed:
                        self._ready.append(container_id)
                    self._cond.notify_all()
            if container_id is not None and closed:
                self._remove_quietly(container_id)
            if failures:
                with self._cond:
                    self._cond.wait_for(lambda: self._closed, timeout=min(30.0, 0.5 * 2**failures))

    def _sweep_trash(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or bool(self._trash))
                if not self._trash:
                    return  # closed and nothing left
                container_id = self._trash.popleft()
            self._remove_quietly(container_id)

    def _remove_quietly(self, container_id: T) -> None:
        try:
            self._remove(container_id)
        except Exception as exc:  # the sweep will get it later
            get_logger().warning("sandbox container could not be removed", container=str(container_id)[:12], error=str(exc))
