"""The state behind ``reason serve``'s app: the runtime and its rebuilds, the requests
and searches in flight, and what the engine did (:class:`EngineActivity`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse

from reason import Backend, BackendError, Config, ReasonError, Runtime, UsageError
from reason.log import get_logger
from reason.prompts import messages_for

from .formats import Format
from .limits import Admission, Limits, Ticket
from .metrics import Metrics
from .protocol import APIError, new_id, now, usage_dict
from .runner import Choice, ClientGone, Counter, Item, solve_all, stream_all, total_usage
from .selection import Selection, make_task, model_ids, searches, select

log = get_logger()


SHUTDOWN_GRACE_SECONDS = 3.0
"""Streams still open when the server stops get this long to send their clients an error
and ``[DONE]`` (less than uvicorn's graceful-shutdown timeout in ``reason serve``)."""

Job = list[tuple[int, Any, dict[str, Any]]]


class EngineActivity:
    """Engine statistics since start, from the runtime's ``EngineStep`` events (a
    continuous backend) or ``BackendCalled`` events (a batch backend). Called in the
    runtime's event-loop thread; plain counters, read by /health."""

    def __init__(self) -> None:
        self.steps = 0
        self.rows = 0
        self.max_rows = 0
        self.shared_steps = 0
        self.decode_tokens = 0
        self.last: dict[str, int] = {}

    def __call__(self, event: Any) -> None:
        kind = event.kind
        if kind == "EngineStep":
            rows = event.running
            self.decode_tokens += event.decode_tokens
            self.last = {"running": event.running, "waiting": event.waiting, "max_batch": event.max_batch}
        elif kind == "BackendCalled":
            rows = event.sequences
            self.decode_tokens += event.completion_tokens
        else:
            return
        self.steps += 1
        self.rows += rows
        self.max_rows = max(self.max_rows, rows)
        self.shared_steps += rows > 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "mean_rows": round(self.rows / self.steps, 3) if self.steps else 0.0,
            "max_rows": self.max_rows,
            "steps_with_several_rows": self.shared_steps,
            "decode_tokens": self.decode_tokens,
            "last_step": self.last,
        }


class Server:
    """The app's state: the runtime, the name it serves under, counters."""

    def __init__(
        self,
        config: Config,
        served_model_name: str | None = None,
        backend: Backend | None = None,
        request_options: bool = False,
        limits: Limits | None = None,
        reasoning: bool = True,
    ) -> None:
        self.config = config
        self.reasoning = reasoning
        self.request_options = request_options
        self.limits = limits or Limits()
        self.admission = Admission(self.limits)
        self._served = served_model_name
        self._backend = backend
        self.runtime: Runtime | None = None
        self.served = served_model_name or ""
        self.counter = Counter()
        self.fault: str | None = None
        """Why the engine cannot serve (while it is rebuilt, or when rebuilding failed)."""
        self.rebuilding: asyncio.Future[None] | None = None
        self.rebuilds = 0
        self.stats = EngineActivity()
        self.started = now()
        self.metrics = Metrics(
            {
                "requests_in_flight": ("Requests being answered", lambda: self.counter.requests),
                "searches_running": ("Searches holding a slot", lambda: self.admission.running),
                "searches_queued": ("Searches waiting for a slot", lambda: self.admission.queued),
                "engine_rows_in_flight": ("Sequences in the engine's batch", self._rows_in_flight),
            }
        )

    def _rows_in_flight(self) -> float:
        rows = self.runtime.backend.rows_in_flight if self.runtime is not None else None
        return float(rows or 0)

    async def start(self) -> None:
        """Build the runtime and load its model; requests reach it once it is loaded."""
        runtime = Runtime(self.config, backend=self._backend)
        runtime.subscribe(self.stats)
        try:
            await asyncio.to_thread(lambda: runtime.backend.load())
        except BaseException:
            await asyncio.to_thread(runtime.close)
            raise
        self.runtime = runtime
        self.served = self._served or runtime.backend.model_name or self.config.backend
        log.info("reason serve ready", model=self.served, search=self.config.search)

    async def stop(self) -> None:
        if self.rebuilding is not None:
            self.rebuilding.cancel()
            await asyncio.gather(self.rebuilding, return_exceptions=True)
        if self.runtime is not None:
            runtime, self.runtime = self.runtime, None
            await asyncio.to_thread(runtime.close)

    @property
    def rt(self) -> Runtime:
        if self.runtime is None:
            if self.fault is not None:
                raise APIError(
                    f"the engine failed ({self.fault}) and is being rebuilt; retry shortly",
                    503,
                    type="server_error",
                    code="engine_unavailable",
                    headers={"Retry-After": "5"},
                )
            raise APIError("the server is starting or stopping", 503, type="server_error")
        return self.runtime

    # -- faults -------------------------------------------------------------------------

    def check_engine(self) -> None:
        """Rebuild the runtime when its backend says it can serve no more (its engine
        process died): requests meanwhile get 503 with Retry-After, /health says why.
        Called after a failed search and on every health check."""
        runtime = self.runtime
        if runtime is None or self.rebuilding is not None:
            return
        failure = runtime.backend.failure
        if failure is not None:
            self.fault = failure
            self.runtime = None  # no new request reaches the dead engine
            self.rebuilding = asyncio.ensure_future(self._rebuild(runtime, failure))

    async def _rebuild(self, dead: Runtime, failure: str) -> None:
        log.warning("engine failed; rebuilding it", reason=failure)
        try:
            try:
                await asyncio.to_thread(dead.close)
            except Exception as exc:  # what is left of a dead engine may not close cleanly
                log.warning("closing the failed engine", error=f"{type(exc).__name__}: {exc}")
            await self.start()
            self.rebuilds += 1
            self.fault = None
            log.info("engine rebuilt", rebuilds=self.rebuilds)
        except Exception as exc:
            self.fault = f"{failure}; rebuilding failed: {type(exc).__name__}: {exc}"
            log.error("engine rebuild failed", error=self.fault)
        finally:
            self.rebuilding = None

    # -- requests -----------------------------------------------------------------------

    def prepare(
        self,
        body: Any,
        questions: list[str],
        system_prompt: str | None,
        param: str,
        history: list[dict[str, str]] | None = None,
    ) -> tuple[Selection, Job]:
        """Check the request and turn it into jobs: ``(choice index, task, overrides)``,
        ``body.n`` per question (each after the conversation ``history``). Raises
        :class:`APIError` for anything wrong."""
        for name, why in body.unsupported():
            raise APIError(why, param=name)
        rt = self.rt
        sampling = {
            "temperature": body.temperature,
            "top_p": body.top_p,
            "max_tokens": getattr(body, "max_completion_tokens", None) or body.max_tokens,
            "seed": body.seed,
            "system_prompt": system_prompt,
        }
        selection = select(rt, self.served, body.model, sampling, body.reason, self.request_options)
        request_id = new_id("req")
        jobs: Job = []
        for p, question in enumerate(questions):
            for j in range(body.n):
                index = p * body.n + j
                task = make_task(question, f"{request_id}-{index}", selection.kind, history or ())
                if j == 0:
                    self.check_context(task, selection, param)
                overrides = dict(selection.overrides)
                if selection.config.seed is not None and index:
                    overrides["seed"] = selection.config.seed + index  # n searches, not n copies
                jobs.append((index, task, overrides))
        self.limits.check(
            len(jobs),
            selection.overrides.get("n"),
            selection.overrides.get("max_tokens"),
            choices_param="n" if len(questions) == 1 else "prompt",
        )
        return selection, jobs

    def check_context(self, task: Any, selection: Selection, param: str) -> None:
        """400 ``context_length_exceeded`` when the prompt does not fit the model (on
        backends that can count tokens)."""
        backend = self.rt.backend
        limit = backend.context_length
        if not limit:
            return
        ids = backend.encode(backend.format_prompt(messages_for(task, selection.config.system_prompt)))
        count = len(ids) if ids is not None else 0
        if count >= limit:
            raise APIError(
                f"This model's maximum context length is {limit} tokens. However, your messages resulted in "
                f"{count} tokens. Please reduce the length of the messages.",
                param=param,
                code="context_length_exceeded",
            )

    def deadline(self) -> float | None:
        """The event-loop time by which a request arriving now must be answered."""
        seconds = self.limits.deadline
        return asyncio.get_running_loop().time() + seconds if seconds is not None else None

    async def respond(self, request: Request, body: Any, selection: Selection, jobs: Job, fmt: Format) -> Response:
        deadline = self.deadline()
        ticket = self.admission.reserve(len(jobs))  # a 429 now, before any response starts
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            shutdown = anyio.Event()
            events = self.sse(jobs, fmt, include_usage, selection, ticket, shutdown, deadline)
            return EventSourceResponse(
                events,
                sep="\n",
                ping=15,
                headers={"Cache-Control": "no-cache"},
                shutdown_event=shutdown,
                shutdown_grace_period=SHUTDOWN_GRACE_SECONDS,
            )
        search = selection.search
        with self.counter.request():
            timer = asyncio.timeout_at(deadline)
            try:
                async with timer, self.admission.hold(ticket):
                    choices = await solve_all(self.rt, jobs, request.receive, self.counter)
            except ClientGone:
                self.metrics.searches_ended(search, "cancelled", len(jobs))
                return Response(status_code=499)
            except TimeoutError as exc:
                self.metrics.searches_ended(search, "cancelled", len(jobs))
                if timer.expired() and self.limits.deadline is not None:
                    raise deadline_error(self.limits.deadline) from exc
                raise to_api_error(exc) from exc
            except Exception as exc:
                self.metrics.searches_ended(search, "error", len(jobs))
                self.check_engine()
                raise to_api_error(exc) from exc
        for choice in choices:
            self.metrics.search_done(choice.solution)
        choices.sort(key=lambda c: c.index)
        return JSONResponse(fmt.response(choices))

    async def sse(
        self,
        jobs: Job,
        fmt: Format,
        include_usage: bool,
        selection: Selection,
        ticket: Ticket,
        shutdown: Any = None,
        deadline: float | None = None,
    ) -> AsyncIterator[str]:
        start = asyncio.get_running_loop().time()
        ended = 0  # searches done or failed; the rest were cancelled when the stream closed
        with self.counter.request():
            try:
                for index, _, _ in jobs:
                    first = fmt.start(index)
                    if first is not None:
                        yield dumps(first)
                try:
                    async with self.admission.hold(ticket, deadline):
                        choices: list[Choice] = []
                        items = stream_all(
                            self.rt,
                            jobs,
                            progress_events=selection.progress,
                            counter=self.counter,
                            to_error=to_api_error,
                            shutdown=shutdown,
                            stop_at=deadline,
                            timeout_error=deadline_error(self.limits.deadline) if self.limits.deadline is not None else None,
                        )
                        first_content = True
                        async with contextlib.aclosing(items):
                            async for item in items:
                                if item.kind == "content" and first_content:
                                    first_content = False
                                    self.metrics.first_token.observe(asyncio.get_running_loop().time() - start)
                                elif item.kind == "done":
                                    ended += 1
                                    self.metrics.search_done(item.data.solution)
                                elif item.kind == "error":  # a failed search, the deadline or the shutdown
                                    self.check_engine()
                                    outcome = (
                                        "error" if item.data.code not in ("deadline_exceeded", "server_shutdown") else "cancelled"
                                    )
                                    self.metrics.searches_ended(selection.search, outcome, len(jobs) - ended)
                                    ended = len(jobs)
                                for chunk in self._chunks(fmt, item, choices, len(jobs), include_usage):
                                    yield dumps(chunk)
                                if item.kind == "error":
                                    yield "[DONE]"
                                    return
                except TimeoutError:  # the deadline passed while the request was queued
                    assert self.limits.deadline is not None
                    yield dumps(deadline_error(self.limits.deadline).to_dict())
                    yield "[DONE]"
                    return
                if include_usage:
                    yield dumps(fmt.usage_chunk(usage_dict(*total_usage(choices))))
                yield "[DONE]"
            finally:
                self.metrics.searches_ended(selection.search, "cancelled", len(jobs) - ended)

    def _chunks(self, fmt: Format, item: Item, choices: list[Choice], total: int, include_usage: bool) -> list[dict[str, Any]]:
        if item.kind == "progress":
            return [fmt.progress_chunk(item.index, item.data)]
        if item.kind == "content":
            return fmt.content_chunks(item.index, item.data)
        if item.kind == "error":
            return [item.data.to_dict()]
        choice: Choice = item.data
        choices.append(choice)
        usage = usage_dict(*total_usage(choices)) if len(choices) == total and not include_usage else None
        last = fmt.chunk(item.index, None, finish=choice.finish_reason, extension=choice.extension(), usage=usage)
        return [*fmt.content_end(item.index), last]

    # -- reports ------------------------------------------------------------------------

    def models(self) -> dict[str, Any]:
        rt = self.rt
        default = self.config.search
        data = []
        for model_id in model_ids(rt, self.served):
            search = model_id.partition("/")[0] if model_id != self.served else default
            data.append(
                {
                    "id": model_id,
                    "object": "model",
                    "created": self.started,
                    "owned_by": "reason-runtime",
                    "root": self.served,
                    "reason": {"search": search, "default": model_id == self.served},
                }
            )
        registry = rt.registry
        return {
            "object": "list",
            "data": data,
            "reason": {
                "default": {k: v for k, v in self.config.to_dict().items() if k not in ("options",)},
                "searches": searches(rt),
                "verifiers": registry.names("verifier"),
                "splitters": registry.names("splitter"),
                "reflections": registry.names("reflection"),
            },
        }

    def health(self) -> dict[str, Any]:
        rt = self.runtime
        backend = rt.backend if rt is not None else None
        stats = backend.stats if backend is not None else None
        engine: dict[str, Any] = {
            "rows_in_flight": backend.rows_in_flight if backend is not None else None,
            "cancelled_rows": stats.cancelled if stats is not None else None,
            **self.stats.to_dict(),
        }
        return {
            "status": "ok" if rt is not None else "unhealthy" if self.fault else "stopping",
            "fault": self.fault,
            "engine_rebuilds": self.rebuilds,
            "model": self.served,
            "search": self.config.search,
            "pid": os.getpid(),
            "requests_in_flight": self.counter.requests,
            "searches_in_flight": self.counter.searches,
            "searches_queued": self.admission.queued,
            "searches_cancelled": self.counter.cancelled,
            "requests_served": self.counter.served,
            "engine": engine,
        }


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def deadline_error(seconds: float) -> APIError:
    return APIError(
        f"the request did not finish within this server's deadline ({seconds:g} s); its searches were cancelled",
        504,
        type="timeout_error",
        code="deadline_exceeded",
    )


def to_api_error(exc: BaseException) -> APIError:
    """A failure inside a search as the error the client gets."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, UsageError):
        return APIError(str(exc))
    if isinstance(exc, BackendError):  # the engine failed what it held; the server goes on (or rebuilds it)
        return APIError(str(exc), 503, type="server_error", code="engine_error", headers={"Retry-After": "5"})
    if isinstance(exc, ReasonError):
        return APIError(str(exc), 500, type="server_error")
    log.warning("search failed", error=f"{type(exc).__name__}: {exc}")
    return APIError(f"the search failed: {type(exc).__name__}: {exc}", 500, type="server_error")
