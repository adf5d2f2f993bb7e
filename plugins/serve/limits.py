"""What one deployer lets clients ask of ``reason serve``, and the gate that holds them to it.

A client cannot exceed :class:`Limits`: a request asking for more choices, a wider search
or more tokens than allowed is a 400 naming the field and the cap; searches beyond the
ones running wait in a bounded queue, and a request that would overflow it is a 429 with
``Retry-After`` (:class:`Admission`). A request's deadline cancels its searches, which
frees their rows in the engine.

Counted in searches, not requests: a request with ``n`` choices over ``p`` prompts is
``n * p`` searches, each as heavy as a request with one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from collections.abc import AsyncIterator

from attrs import field, frozen, validators

from .protocol import APIError

_positive = validators.optional(validators.ge(1))


@frozen
class Limits:
    """Caps a deployer sets (``reason serve --limit-*``; None: no cap)."""

    choices: int | None = field(default=None, validator=_positive)
    """searches one request may ask for (``n`` times the prompts)"""
    width: int | None = field(default=None, validator=_positive)
    """a search's N (``reason.n``): the paths it keeps or samples"""
    tokens: int | None = field(default=None, validator=_positive)
    """``max_tokens`` (per path) a request may ask for"""
    searches: int = field(default=64, validator=validators.ge(1))
    """searches running at once, over every request"""
    queue: int = field(default=256, validator=validators.ge(0))
    """searches waiting for a slot; past it a request is refused with 429"""
    deadline: float | None = field(default=None, validator=validators.optional(validators.gt(0)))
    """seconds a request may take; then its searches are cancelled (504)"""

    def check(self, choices: int, width: int | None, max_tokens: int | None, *, choices_param: str = "n") -> None:
        """400 when a request asks for more than a cap allows, or for more searches than
        could ever run at once. ``width`` and ``max_tokens``: what the request set (None:
        the server's own defaults, which are the deployer's choice)."""
        cap = min(self.choices or choices, self.searches)
        if choices > cap:
            raise APIError(
                f"this request asks for {choices} searches (n times the prompts); this server runs at most {cap} per request",
                param=choices_param,
                code="limit_exceeded",
            )
        if self.width is not None and width is not None and width > self.width:
            raise APIError(
                f"reason.n is {width}; this server allows at most {self.width} paths per search",
                param="reason.n",
                code="limit_exceeded",
            )
        if self.tokens is not None and max_tokens is not None and max_tokens > self.tokens:
            raise APIError(
                f"max_tokens is {max_tokens}; this server allows at most {self.tokens} tokens per path",
                param="max_tokens",
                code="limit_exceeded",
            )


class Ticket:
    """One request's searches' place at the gate: slots granted now, or a place in the
    queue until they are. Its slots go back exactly once: when the request is done
    (:meth:`Admission.hold`), or when the ticket is dropped unused (a streamed response
    whose body never started still gives them back)."""

    def __init__(self, admission: Admission, searches: int, waiter: asyncio.Future[None] | None) -> None:
        self.admission = admission
        self.searches = searches
        self.waiter = waiter
        self.returned = False

    @property
    def granted(self) -> bool:
        return self.waiter is None or (self.waiter.done() and not self.waiter.cancelled())

    def give_back(self) -> None:
        if self.returned:
            return
        self.returned = True
        if self.granted:
            self.admission.running -= self.searches
        elif self.waiter is not None:
            self.waiter.cancel()
        self.admission.wake()

    def __del__(self) -> None:
        with contextlib.suppress(RuntimeError):  # its event loop may be closed already
            self.give_back()


class Admission:
    """Slots for running searches, handed out first come, first served, with a bounded
    queue. Lives on the server's event loop (no locks: every call is on that loop)."""

    def __init__(self, limits: Limits) -> None:
        self.capacity = limits.searches
        self.queue_limit = limits.queue
        self.running = 0
        self.waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._seconds = 0.0  # an exponential mean of how long a request holds its slots

    @property
    def queued(self) -> int:
        """Searches waiting for a slot."""
        return sum(k for k, waiter in self.waiting if not waiter.cancelled())

    def retry_after(self) -> int:
        """Seconds a refused client should wait: about one request's time in the slots."""
        return max(1, math.ceil(self._seconds))

    def reserve(self, searches: int) -> Ticket:
        """Slots for ``searches`` now, or a place in the queue. Raises a 429 when the queue
        is full."""
        if not self.waiting and self.running + searches <= self.capacity:
            self.running += searches
            return Ticket(self, searches, None)
        if self.queued + searches > self.queue_limit:
            raise APIError(
                f"the server is at capacity ({self.running} searches running, {self.queued} waiting); "
                f"retry in {self.retry_after()} s",
                429,
                type="rate_limit_error",
                code="server_busy",
                headers={"Retry-After": str(self.retry_after())},
            )
        waiter = asyncio.get_running_loop().create_future()
        self.waiting.append((searches, waiter))
        return Ticket(self, searches, waiter)

    @contextlib.asynccontextmanager
    async def hold(self, ticket: Ticket, deadline: float | None = None) -> AsyncIterator[None]:
        """Wait until ``ticket``'s slots are granted (until the event-loop time
        ``deadline``, then TimeoutError), hold them while the body runs, then give them
        back. A caller cancelled or timed out while queued leaves the queue."""
        try:
            if not ticket.granted:
                assert ticket.waiter is not None
                async with asyncio.timeout_at(deadline):
                    await asyncio.shield(ticket.waiter)
            start = asyncio.get_running_loop().time()
            yield
            elapsed = asyncio.get_running_loop().time() - start
            self._seconds = elapsed if not self._seconds else 0.8 * self._seconds + 0.2 * elapsed
        finally:
            ticket.give_back()

    def wake(self) -> None:
        """Grant slots to the queue's head while it fits (first come, first served: a
        small request never overtakes a large one waiting before it); drop the places of
        requests that left."""
        self.waiting = collections.deque((k, w) for k, w in self.waiting if not w.cancelled())
        while self.waiting:
            k, waiter = self.waiting[0]
            if self.running + k > self.capacity:
                return
            self.waiting.popleft()
            self.running += k
            waiter.set_result(None)
