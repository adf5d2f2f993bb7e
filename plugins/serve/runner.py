"""Running a request's searches on the shared Runtime, whole or streamed.

A request with ``n`` choices is ``n`` independent searches, each ``await``-ed on the
server's one :class:`~reason.Runtime`, so they batch with every other request's. A
caller that goes away cancels them: the non-streamed path watches the connection while
it waits, the streamed path closes its ``Runtime.stream`` iterators; either way the
engine drops their rows.

Streaming turns each search's events into a small vocabulary (:class:`Item`): progress
(a documented dict, see :func:`progress`), content deltas, and the end of the search.
Single-path strategies (greedy) get their content from ``TextGenerated`` events, token
by token; the others send the chosen path as deltas the moment the search returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, Callable
from typing import Any

from attrs import define, field

from reason import Runtime, Solution, Task
from reason.aio import gather_all
from reason.log import get_logger

from .protocol import APIError

log = get_logger()

SINGLE_PATH = frozenset({"greedy"})
"""Strategies whose one path *is* the answer, so its tokens can be streamed as they are
generated (every other strategy only knows its answer when it has chosen)."""

_PARAGRAPH = re.compile(r"(?<=\n\n)")


# -- results -------------------------------------------------------------------------


@define
class Choice:
    """One finished search, with what the response needs to say about it."""

    index: int
    solution: Solution

    @property
    def chosen_node(self) -> Any:
        """The tree node the chosen answer ends at (None: the search found nothing)."""
        return self.solution.chosen_node

    @property
    def answer_tokens(self) -> int:
        node = self.chosen_node
        return node.num_tokens if node is not None else 0

    @property
    def finish_reason(self) -> str:
        node = self.chosen_node
        if node is None:
            return "stop"
        budget = self.solution.config.get("max_tokens")
        if (node.step is not None and node.step.finish_reason == "length") or (budget and node.num_tokens >= budget):
            return "length"
        return "stop"

    def extension(self) -> dict[str, Any]:
        """``choices[i].reason``: the answer, its score, every candidate, this search's
        own usage and time."""
        s = self.solution
        config = s.config
        return {
            "search": config.get("search"),
            "n": config.get("n"),
            "verifier": config.get("verifier"),
            "answer": s.answer,
            "score": s.score,
            "candidates": [
                {"answer": c.answer, "score": c.score, "step_scores": list(c.step_scores), "text": c.text} for c in s.candidates
            ],
            "usage": {**s.usage.to_dict(), "answer_tokens": self.answer_tokens},
            "seconds": round(s.seconds, 3),
            "tree_nodes": len(s.tree),
        }


def total_usage(choices: list[Choice]) -> tuple[int, int, int]:
    """(prompt tokens, completion tokens, answer tokens) summed over every search."""
    prompt = sum(c.solution.usage.prompt_tokens for c in choices)
    completion = sum(c.solution.usage.completion_tokens for c in choices)
    answer = sum(c.answer_tokens for c in choices)
    return prompt, completion, answer


# -- whole responses -----------------------------------------------------------------


async def wait_for_disconnect(receive: Callable[[], Any]) -> None:
    """Return when the client closes the connection (the request body is already read,
    so the next ASGI message is the disconnect)."""
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return


class ClientGone(Exception):
    """The client disconnected before its response was ready; its searches were cancelled."""


async def solve_all(
    runtime: Runtime,
    jobs: list[tuple[int, Task, dict[str, Any]]],
    receive: Callable[[], Any] | None,
    counter: Counter,
) -> list[Choice]:
    """Run every (index, task, overrides) side by side; cancel them all if the client
    disconnects (raises :class:`ClientGone`) or one fails (raises its error)."""

    async def one(index: int, task: Task, overrides: dict[str, Any]) -> Choice:
        with counter.search():
            return Choice(index, await runtime.asolve(task, **overrides))

    # gather_all: one failing search cancels its siblings (asyncio.gather would leave
    # them running on the engine, unobserved)
    work = asyncio.ensure_future(gather_all(*(one(*job) for job in jobs)))
    watcher = asyncio.ensure_future(wait_for_disconnect(receive)) if receive is not None else None
    try:
        waiting = {work} if watcher is None else {work, watcher}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if work not in done:
            raise ClientGone()
        return list(work.result())
    finally:
        for task in (work, watcher):
            if task is not None and not task.done():
                task.cancel()
        with contextlib.suppress(BaseException):
            await work


# -- streaming -----------------------------------------------------------------------


@define
class Item:
    """One thing to tell a streaming client about choice ``index``: ``kind`` is
    ``progress`` (``data``: a dict), ``content`` (``data``: text), ``done`` (``data``: a
    :class:`Choice`) or ``error`` (``data``: an :class:`APIError`)."""

    kind: str
    index: int
    data: Any


async def stream_all(
    runtime: Runtime,
    jobs: list[tuple[int, Task, dict[str, Any]]],
    *,
    progress_events: bool,
    counter: Counter,
    to_error: Callable[[BaseException], APIError],
    shutdown: Any = None,
    stop_at: float | None = None,
    timeout_error: APIError | None = None,
) -> AsyncGenerator[Item, None]:
    """Run every job as a stream and yield :class:`Item` s as they happen, choices
    interleaved. Closing this iterator (a client gone) cancels every search; so does
    ``shutdown`` (an event with ``wait()``, set when the server stops), and so does the
    event-loop time ``stop_at`` (a deadline), each after an error item that tells the
    client why (``timeout_error`` for the deadline)."""
    queue: asyncio.Queue[Item] = asyncio.Queue()

    async def one(index: int, task: Task, overrides: dict[str, Any]) -> None:
        search = overrides.get("search", runtime.config.search)
        single = search.partition(":")[0] in SINGLE_PATH
        view = SearchView(stream_tokens=single)
        try:
            with counter.search():
                async with runtime.stream(task, tokens=single, **overrides) as run:
                    async for event in run:
                        for kind, data in view.feed(event, progress_events):
                            queue.put_nowait(Item(kind, index, data))
                solution = run.solution
            for text in view.finish(solution.text):
                queue.put_nowait(Item("content", index, text))
            queue.put_nowait(Item("done", index, Choice(index, solution)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            queue.put_nowait(Item("error", index, to_error(exc)))

    async def stopping() -> None:
        await shutdown.wait()
        error = APIError(
            "the server is shutting down; the search was cancelled", 503, type="server_error", code="server_shutdown"
        )
        queue.put_nowait(Item("error", jobs[0][0], error))

    async def expiring() -> None:
        assert stop_at is not None and timeout_error is not None
        await asyncio.sleep(stop_at - asyncio.get_running_loop().time())
        queue.put_nowait(Item("error", jobs[0][0], timeout_error))

    workers = [asyncio.create_task(one(*job)) for job in jobs]
    if shutdown is not None:
        workers.append(asyncio.create_task(stopping()))
    if stop_at is not None:
        workers.append(asyncio.create_task(expiring()))
    try:
        remaining = len(jobs)
        while remaining:
            item = await queue.get()
            if item.kind in ("done", "error"):
                remaining -= 1
            yield item
            if item.kind == "error":
                return
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


@define
class SearchView:
    """What a streaming client sees of one search, rebuilt from its events: progress
    dicts, the current best path, and (single-path strategies) the text as it grows."""

    stream_tokens: bool = False
    parents: dict[int, int] = field(factory=dict)
    texts: dict[int, str] = field(factory=dict)
    growing: dict[tuple[int, int], str] = field(factory=dict)
    committed: str = ""
    """Single path: the text of the finished segments (steps and reflections)."""
    sent: str = ""
    """Single path: the content sent so far."""
    diverged: bool = False

    def feed(self, event: Any, progress_events: bool) -> list[tuple[str, Any]]:
        kind = event.kind
        out: list[tuple[str, Any]] = []
        if kind == "TextGenerated":
            self.growing[(event.parent_id, event.sample)] = event.text
            if self.stream_tokens:
                delta = self._advance(self.committed + event.text)
                if delta:
                    out.append(("content", delta))
            return out
        if kind == "StepsGenerated":
            known = getattr(event, "texts", None)  # where the event carries the steps' texts
            for sample, node_id in enumerate(event.node_ids):
                self.parents[node_id] = event.parent_id
                text = self.growing.pop((event.parent_id, sample), None)
                if known is not None and sample < len(known):
                    text = known[sample]
                if text is not None:
                    self.texts[node_id] = text
            if self.stream_tokens and len(event.node_ids) == 1:
                if event.node_ids[0] in self.texts:
                    self.committed += self.texts[event.node_ids[0]]
                else:  # the backend did not stream this step: the rest comes at the end
                    self.stream_tokens = False
        elif kind == "ReflectionInjected":
            self.parents[event.node_id] = event.parent_id
            self.texts[event.node_id] = event.text
            if self.stream_tokens:
                self.committed += event.text
                delta = self._advance(self.committed)
                if delta:
                    out.append(("content", delta))
        if progress_events:
            data = progress(event)
            if data is not None:
                if kind == "StepsScored" and event.scores:
                    best = max(range(len(event.scores)), key=lambda i: event.scores[i])
                    data["best"] = self.best(event.node_ids[best], event.scores[best])
                out.append(("progress", data))
        return out

    def best(self, node_id: int, score: float) -> dict[str, Any]:
        """The best-scored path of the latest scoring round: its node ids and, where the
        steps' texts were seen, its text."""
        path, node = [], node_id
        while node in self.parents:
            path.append(node)
            node = self.parents[node]
        path.reverse()
        best: dict[str, Any] = {"node_id": node_id, "score": score, "path": path}
        if path and all(n in self.texts for n in path):
            best["text"] = "".join(self.texts[n] for n in path)
        return best

    def _advance(self, text: str) -> str:
        """The part of ``text`` not sent yet (nothing once the path diverged from what
        was sent, e.g. a trigger removed text; a trailing incomplete character waits)."""
        if self.diverged:
            return ""
        if not text.startswith(self.sent):
            self.diverged = True
            return ""
        stable = text.rstrip("\ufffd")
        delta = stable[len(self.sent) :]
        self.sent += delta
        return delta

    def finish(self, final: str) -> list[str]:
        """The content deltas still owed once the search chose ``final``: the rest of the
        streamed path, or (multi-path) the chosen path, paragraph by paragraph."""
        if self.sent and not final.startswith(self.sent):
            log.warning("streamed text differs from the chosen answer", sent=len(self.sent), final=len(final))
            return []
        rest = final[len(self.sent) :]
        self.sent = final
        return [piece for piece in _PARAGRAPH.split(rest) if piece]


def progress(event: Any) -> dict[str, Any] | None:
    """The documented progress payload of an event (``reason`` on a stream chunk), or
    None for events a client is not told about (engine statistics, token text)."""
    kind = event.kind
    if kind == "SearchStarted":
        return {"type": "search.started", "search": event.search, "config": event.config}
    if kind == "StepsGenerated":
        return {
            "type": "steps.generated",
            "parent_id": event.parent_id,
            "node_ids": list(event.node_ids),
            "completion_tokens": event.completion_tokens,
            "seconds": round(event.seconds, 3),
        }
    if kind == "StepsScored":
        return {
            "type": "steps.scored",
            "verifier": event.verifier,
            "node_ids": list(event.node_ids),
            "scores": list(event.scores),
        }
    if kind == "ReflectionInjected":
        return {
            "type": "reflection",
            "trigger": event.trigger,
            "node_id": event.node_id,
            "parent_id": event.parent_id,
            "text": event.text,
        }
    if kind == "NodesPruned":
        return {"type": "nodes.pruned", "node_ids": list(event.node_ids), "reason": event.reason}
    if kind == "AnswerFound":
        return {"type": "answer.found", "node_id": event.node_id, "answer": event.answer, "score": event.score}
    if kind == "SearchFinished":
        return {
            "type": "search.finished",
            "answer": event.answer,
            "score": event.score,
            "usage": event.usage.to_dict(),
            "seconds": round(event.seconds, 3),
        }
    return None


# -- bookkeeping ---------------------------------------------------------------------


@define
class Counter:
    """Searches and requests this server has in flight (for /health)."""

    searches: int = 0
    requests: int = 0
    served: int = 0
    cancelled: int = 0

    @contextlib.contextmanager
    def search(self):
        self.searches += 1
        try:
            yield
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.searches -= 1

    @contextlib.contextmanager
    def request(self):
        self.requests += 1
        try:
            yield
        finally:
            self.requests -= 1
            self.served += 1
