"""Engines: where a search's requests go the moment it makes them.

There is no global tick. A search awaits ``ctx.expand`` / ``ctx.score``; the request goes
at once to its component's engine, and the search resumes when *its* request is done,
while other searches' requests keep the component busy:

- A *continuous* backend (:attr:`Backend.continuous`) gets each request through
  ``generate_async`` and batches whatever is in flight itself (sequences leave the batch
  as they finish, newcomers join between decode steps).
- Everything else (a batch backend, every verifier) sits behind a :class:`BatchQueue`:
  one call at a time in a worker thread, and the next call is whatever arrived while the
  previous one ran (a verifier's, up to its ``max_batch`` paths).

:class:`Engines` routes requests to those, counts each search's usage and emits the
events. One instance lives as long as its :class:`~reason.runtime.Runtime` and serves
every caller of it.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from attrs import asdict, define

from .components import Backend, Verifier
from .events import BackendCalled, Event, VerifierCalled
from .types import Completion, GenerateRequest, Score, ScoreRequest, Usage

P = TypeVar("P")
R = TypeVar("R")
T = TypeVar("T")


@define
class EngineStats:
    """What a continuous engine computed, for benchmarks and ``/health``: the counters
    every backend that batches continuously keeps (backends add their own fields)."""

    requests: int = 0
    sequences: int = 0
    cancelled: int = 0
    """Sequences dropped (decoding or waiting for a row) because their caller gave up."""
    prefill_tokens: int = 0
    """Prompt tokens encoded (padding excluded)."""
    reused_tokens: int = 0
    """Prompt tokens whose keys and values came from a prefix cache instead."""
    decode_tokens: int = 0
    """Tokens generated."""
    decode_steps: int = 0
    decode_rows: int = 0
    """Rows summed over decode steps: ``decode_rows / decode_steps`` is the mean batch."""
    waiting_steps: int = 0
    waiting_rows: int = 0
    """The same, counting only steps while sequences were waiting for a row."""

    @property
    def mean_batch(self) -> float:
        return self.decode_rows / self.decode_steps if self.decode_steps else 0.0

    @property
    def mean_batch_when_waiting(self) -> float:
        return self.waiting_rows / self.waiting_steps if self.waiting_steps else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean_batch": self.mean_batch, "mean_batch_when_waiting": self.mean_batch_when_waiting}


class BatchQueue(Generic[P, R]):
    """Serve a blocking batch function ``fn(payloads) -> results`` to async callers.

    One call runs at a time, in this queue's own worker thread. Requests that arrive
    while it runs wait and form the next call; a request whose caller gave up (cancelled)
    before its call started is dropped. Requests made in the same event-loop iteration
    (the children of one ``gather``) share a call, within ``limit``: dispatch is deferred
    by one iteration with ``call_soon``, no timers.

    ``limit``: the most a call takes, counting each request as ``size(request)``, in the
    order they came (a request larger than that goes alone; the rest wait for the next
    call). A call runs to its end once started, so this bounds how long a stop waits for
    it and how long the first caller in a long queue waits for its result.

    Lives on one event loop (the runtime's).
    """

    def __init__(
        self,
        fn: Callable[[list[P]], Sequence[R]],
        name: str,
        on_call: Callable[[list[P], Sequence[R], float], None] | None = None,
        *,
        limit: int | None = None,
        size: Callable[[P], int] = lambda _: 1,
    ) -> None:
        self.fn = fn
        self.name = name
        self.on_call = on_call
        self.limit = limit
        self.size = size
        self.calls = 0
        self._pending: list[tuple[P, asyncio.Future[R]]] = []
        self._busy = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"reason-{name}")

    async def submit(self, payload: P) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((payload, future))
        if not self._busy:
            self._busy = True
            loop.call_soon(self._dispatch)
        return await future

    def _dispatch(self) -> None:
        waiting = [(payload, future) for payload, future in self._pending if not future.done()]
        taken = total = 0
        for payload, _ in waiting:
            total += self.size(payload)
            if taken and self.limit is not None and total > self.limit:
                break
            taken += 1
        batch, self._pending = waiting[:taken], waiting[taken:]
        if not batch:
            self._busy = False
            return
        asyncio.get_running_loop().create_task(self._call(batch))

    async def _call(self, batch: list[tuple[P, asyncio.Future[R]]]) -> None:
        loop = asyncio.get_running_loop()
        payloads = [payload for payload, _ in batch]
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self.fn, payloads)
            if len(results) != len(payloads):
                raise RuntimeError(f"{self.name} returned {len(results)} results for {len(payloads)} requests")
        except BaseException as exc:  # every waiting caller learns why
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            self.calls += 1
            if self.on_call is not None:
                self.on_call(payloads, results, time.perf_counter() - start)
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
        # The callers just resumed are scheduled before this: their next requests join
        # the next call (behind any left over from this one) instead of trailing it.
        loop.call_soon(self._dispatch)

    def close(self) -> None:
        """Drop queued calls and wait for a running one (of at most ``limit``), so that
        the component is not closed under it."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def let_go(self) -> None:
        """End the worker thread once it is idle, without waiting (from any thread)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


@define
class BatchedBackend:
    """A batch-only backend as the engine sees a continuous one: each request waits in
    ``queue`` and goes to the backend's :meth:`~Backend.generate` with every request that
    arrived while the previous call ran."""

    queue: BatchQueue[GenerateRequest, list[Completion]]

    async def generate_async(
        self, request: GenerateRequest, *, on_text: Callable[[int, str], None] | None = None
    ) -> list[Completion]:
        return await self.queue.submit(request)


class Engines:
    """The runtime's engines: one for the policy backend, one queue per verifier.

    A verifier's queue lives as long as the verifier: it holds the verifier weakly, and
    its worker thread ends when the verifier is collected (let go by the component cache
    and by every search that used it).

    Also keeps each search's :class:`Usage`: ``model_calls`` / ``verifier_calls`` count
    the times a search turned to the model / a verifier; the requests it makes together
    (the beams of one round, in one event-loop iteration) count once.
    """

    def __init__(self, backend: Callable[[], Backend], emit: Callable[[Event], None]) -> None:
        self._backend_factory = backend
        self.emit = emit
        self._batched: BatchedBackend | None = None
        self._score_queues: dict[int, BatchQueue[Any, Any]] = {}  # by id(verifier), while it lives
        self._waits: set[tuple[str, int]] = set()
        self.sequences = 0
        """Sequences asked of the policy backend and not yet returned."""
        self.verifying = 0
        """Paths sent to a verifier and not yet scored."""
        self._watchers: list[Callable[[int, bool], None]] = []

    # -- generation -----------------------------------------------------------------

    @property
    def backend_watches(self) -> bool:
        """Whether the backend honours :attr:`GenerateRequest.watch`."""
        return bool(self._backend_factory().watches)

    async def generate(
        self,
        owner: Any,
        request: GenerateRequest,
        on_text: Callable[[int, str], None] | None = None,
        opening: bool = False,
    ) -> list[Completion]:
        """``request.n`` completions of ``request``, counted against ``owner`` (a search
        context with ``add_usage``, or None). ``on_text(sample, text_so_far)`` is called
        in this event loop as tokens come, where the backend streams text. ``opening``:
        the request is the first of its problem's search (told to :meth:`watch_sequences`)."""
        backend = self._backend_factory()
        first = self._new_wait("generate", owner)
        relay = None
        if on_text is not None and backend.continuous and backend.streams_text:
            loop = asyncio.get_running_loop()

            def relay(sample: int, text: str) -> None:  # the engine calls it from its own thread
                loop.call_soon_threadsafe(on_text, sample, text)

        self._sequences_changed(request.n, opening)
        try:
            completions = await self._engine(backend).generate_async(request, on_text=relay)
        finally:
            self._sequences_changed(-request.n)
        if len(completions) != request.n:
            raise RuntimeError(f"backend {type(backend).__name__} returned {len(completions)} completions for n={request.n}")
        if owner is not None:
            owner.add_usage(
                Usage(
                    prompt_tokens=completions[0].prompt_tokens if completions else 0,
                    encoded_tokens=sum(c.prompt_tokens - c.cached_tokens for c in completions),
                    completion_tokens=sum(c.num_tokens for c in completions),
                    sequences=request.n,
                    model_calls=int(first),
                )
            )
        return completions

    def watch_sequences(self, listener: Callable[[int, bool], None]) -> Callable[[], None]:
        """Call ``listener(change, opening)`` (in this event loop) as :attr:`sequences`
        changes: a request's ``n`` when it goes to the backend (``opening``: the first of
        its problem's search), ``-n`` when it comes back, answered or not; and 0 when the
        last path waiting for a verifier (:attr:`verifying`) is scored. Returns a
        function that stops it."""
        self._watchers.append(listener)
        return lambda: self._watchers.remove(listener)

    def _sequences_changed(self, change: int, opening: bool = False) -> None:
        self.sequences += change
        for listener in list(self._watchers):
            listener(change, opening)

    def _engine(self, backend: Backend) -> Backend | BatchedBackend:
        """What takes requests one at a time: a continuous backend itself; a batch-only
        one through a :class:`BatchedBackend`, so that both have one code path here."""
        if backend.continuous:
            return backend
        if self._batched is None:  # the runtime's backend is one for the runtime's life
            self._batched = BatchedBackend(BatchQueue(backend.generate, name="backend", on_call=self._backend_called))
        return self._batched

    def _backend_called(self, requests: list[GenerateRequest], results: Sequence[list[Completion]], seconds: float) -> None:
        self.emit(
            BackendCalled(
                requests=len(requests),
                sequences=sum(r.n for r in requests),
                tasks=0,
                prompt_tokens=sum(c[0].prompt_tokens for c in results if c),
                completion_tokens=sum(x.num_tokens for c in results for x in c),
                seconds=seconds,
            )
        )

    # -- verification ---------------------------------------------------------------

    async def score(self, owner: Any, verifier: Verifier, requests: Sequence[ScoreRequest]) -> list[Score]:
        """Score each path with ``verifier``; the paths of one call stay in one batch
        (of up to :attr:`Verifier.max_batch` paths, unless they are more on their own)."""
        if not requests:
            return []
        queue = self._score_queue(verifier)
        first = self._new_wait("score", owner)
        self.verifying += len(requests)
        try:
            scores = await queue.submit(tuple(requests))
        finally:
            self.verifying -= len(requests)
            if not self.verifying:
                self._sequences_changed(0)  # the verifiers are idle: rows idle now are free
        if owner is not None:
            owner.add_usage(Usage(verifier_calls=int(first)))
        return list(scores)

    def _score_queue(self, verifier: Verifier) -> BatchQueue[Any, Any]:
        queue = self._score_queues.get(id(verifier))
        if queue is None:
            name = verifier.label
            held = weakref.ref(verifier)  # the queue must not keep its verifier alive

            def score_groups(groups: list[tuple[ScoreRequest, ...]]) -> list[list[Score]]:
                flat = [request for group in groups for request in group]
                live = held()
                if live is None:
                    raise RuntimeError(f"verifier {name} was let go")
                scores = live.score(flat)
                if len(scores) != len(flat):
                    raise RuntimeError(f"verifier {name} returned {len(scores)} scores for {len(flat)} paths")
                out, offset = [], 0
                for group in groups:
                    out.append(scores[offset : offset + len(group)])
                    offset += len(group)
                return out

            def called(groups: list[Any], results: Any, seconds: float) -> None:
                self.emit(VerifierCalled(verifier=name, paths=sum(len(g) for g in groups), tasks=len(groups), seconds=seconds))

            queue = BatchQueue(score_groups, name=f"verifier-{name}", on_call=called, limit=verifier.max_batch, size=len)
            self._score_queues[id(verifier)] = queue
            weakref.finalize(verifier, self._let_go, id(verifier))
        return queue

    def _let_go(self, key: int) -> None:
        queue = self._score_queues.pop(key, None)
        if queue is not None:
            queue.let_go()

    # -- bookkeeping ----------------------------------------------------------------

    def _new_wait(self, kind: str, owner: Any) -> bool:
        """True for the first request of ``kind`` that ``owner`` makes in this event-loop
        iteration: requests made together (one round's beams) are one wait."""
        key = (kind, id(owner))
        if key in self._waits:
            return False
        self._waits.add(key)
        asyncio.get_running_loop().call_soon(self._waits.discard, key)
        return True

    def close(self) -> None:
        if self._batched is not None:
            self._batched.queue.close()
        for queue in list(self._score_queues.values()):
            queue.close()
