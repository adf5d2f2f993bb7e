"""The scheduler: turns many small awaits into one batched call per tick.

Every running search (all beams of all problems) awaits ``generate`` or ``score`` here.
A *tick* happens when every participant is blocked on the scheduler: then all pending
generate requests go to the backend in ONE call, and all pending score requests go to
each verifier in one call per verifier. No timers, no polling: the last participant to
block wakes the scheduler, so batches are as large as the algorithms allow and the
result is deterministic.

Bookkeeping: ``running`` counts participants (search coroutines, and the children of
:meth:`gather`); ``blocked`` counts those waiting on a pending request. A participant's
"blocked" mark is cleared when its result is *delivered*, not when it resumes, so a fast
search that resumes and asks again cannot trigger a tick before its slower siblings
have asked too.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from attrs import define, field

from .components import Backend, Verifier
from .events import BackendCalled, Event, VerifierCalled
from .types import Completion, GenerateRequest, Score, ScoreRequest, Usage

T = TypeVar("T")


@define
class _Pending:
    owner: Any  # the SearchContext (or None) whose usage this request counts against
    payload: Any
    future: asyncio.Future[Any]


@define
class Scheduler:
    backend_factory: Callable[[], Backend]
    emit: Callable[[Event], None]
    running: int = 0
    blocked: int = 0
    ticks: int = 0
    backend_calls: int = 0
    _generate: list[_Pending] = field(factory=list)
    _score: dict[int, tuple[Verifier, list[_Pending]]] = field(factory=dict)
    _wake: asyncio.Event = field(factory=asyncio.Event)

    # -- participants -------------------------------------------------------------

    def join(self, count: int = 1) -> None:
        self.running += count

    def leave(self, count: int = 1) -> None:
        self.running -= count
        self._maybe_tick()

    async def gather(self, *aws: Awaitable[T]) -> list[T]:
        """Like ``asyncio.gather``, but the children count as participants, so their
        requests land in the same tick. Use it to run sub-searches side by side."""
        if not aws:
            return []
        remaining = len(aws)
        # The parent is suspended while its children run: it lends them its slot.
        self.join(remaining - 1)

        async def child(aw: Awaitable[T]) -> T:
            nonlocal remaining
            try:
                return await aw
            finally:
                remaining -= 1
                if remaining:  # the last child hands the slot back to the parent
                    self.leave()

        return list(await asyncio.gather(*(child(aw) for aw in aws)))

    # -- requests -----------------------------------------------------------------

    async def generate(self, owner: Any, request: GenerateRequest) -> list[Completion]:
        return await self._submit(self._generate, owner, request)

    async def score(self, owner: Any, verifier: Verifier, requests: Sequence[ScoreRequest]) -> list[Score]:
        if not requests:
            return []
        _, queue = self._score.setdefault(id(verifier), (verifier, []))
        return await self._submit(queue, owner, tuple(requests))

    async def _submit(self, queue: list[_Pending], owner: Any, payload: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        queue.append(_Pending(owner, payload, future))
        self.blocked += 1
        self._maybe_tick()
        try:
            return await future
        except asyncio.CancelledError:
            if not future.done():  # still counted as blocked: un-count it
                future.cancel()
                self.blocked -= 1
            raise

    def _maybe_tick(self) -> None:
        if self.blocked >= self.running and (self._generate or self._score):
            self._wake.set()

    def _deliver(self, pending: _Pending, result: Any = None, error: BaseException | None = None) -> None:
        if pending.future.done():  # cancelled while waiting; already un-counted
            return
        self.blocked -= 1
        if error is not None:
            pending.future.set_exception(error)
        else:
            pending.future.set_result(result)

    # -- the loop -----------------------------------------------------------------

    async def run(self) -> None:
        """Serve ticks until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.tick()

    async def tick(self) -> None:
        self.ticks += 1
        generate, self._generate = self._generate, []
        scores, self._score = self._score, {}
        if generate:
            await self._run_generate(generate)
        for verifier, batch in scores.values():
            await self._run_score(verifier, batch)

    async def _run_generate(self, batch: list[_Pending]) -> None:
        requests = [p.payload for p in batch]
        start = time.perf_counter()
        try:
            backend = self.backend_factory()
            results = await asyncio.to_thread(backend.generate, requests)
            if len(results) != len(requests) or any(len(r) != q.n for r, q in zip(results, requests)):
                raise RuntimeError(f"backend {type(backend).__name__} returned the wrong number of completions")
        except BaseException as exc:
            for pending in batch:
                self._deliver(pending, error=exc)
            return
        seconds = time.perf_counter() - start
        self.backend_calls += 1
        owners: dict[int, Any] = {}
        prompt_tokens = completion_tokens = 0
        usage_by_owner: dict[int, Usage] = defaultdict(Usage)
        for pending, request, completions in zip(batch, requests, results):
            p_tok = completions[0].prompt_tokens if completions else 0
            c_tok = sum(c.num_tokens for c in completions)
            prompt_tokens += p_tok
            completion_tokens += c_tok
            if pending.owner is not None:
                owners[id(pending.owner)] = pending.owner
                usage_by_owner[id(pending.owner)] += Usage(
                    prompt_tokens=p_tok, completion_tokens=c_tok, sequences=request.n
                )
        for key, owner in owners.items():
            owner.add_usage(usage_by_owner[key] + Usage(model_calls=1))
        self.emit(
            BackendCalled(
                requests=len(requests),
                sequences=sum(r.n for r in requests),
                tasks=len(owners),
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                seconds=seconds,
            )
        )
        for pending, completions in zip(batch, results):
            self._deliver(pending, completions)

    async def _run_score(self, verifier: Verifier, batch: list[_Pending]) -> None:
        flat = [request for p in batch for request in p.payload]
        start = time.perf_counter()
        try:
            scores = await asyncio.to_thread(verifier.score, flat)
            if len(scores) != len(flat):
                raise RuntimeError(f"verifier {type(verifier).__name__} returned {len(scores)} scores for {len(flat)} paths")
        except BaseException as exc:
            for pending in batch:
                self._deliver(pending, error=exc)
            return
        owners = {id(p.owner): p.owner for p in batch if p.owner is not None}
        for owner in owners.values():
            owner.add_usage(Usage(verifier_calls=1))
        self.emit(
            VerifierCalled(
                verifier=getattr(verifier, "spec", type(verifier).__name__),
                paths=len(flat),
                tasks=len(owners),
                seconds=time.perf_counter() - start,
            )
        )
        offset = 0
        for pending in batch:
            count = len(pending.payload)
            self._deliver(pending, scores[offset : offset + count])
            offset += count
