"""The Runtime: builds components from plugins, runs searches, batches them, reports.

::

    from reason import Runtime

    with Runtime(search="best-of-n", n=8) as rt:
        solution = rt.solve("What is 17 * 23?")
        print(solution.answer, solution.usage)

Components are built once per Runtime (the backend loads its model on first use) and
reused across solves; the search policy is built per task.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from .components import Backend, ReflectionTrigger, SearchPolicy, Splitter, Verifier
from .config import Config
from .context import SearchContext
from .errors import UsageError
from .log import get_logger
from .events import Event, SearchFailed, SearchFinished, SearchStarted
from .registry import PluginRegistry, get_registry
from .prompts import messages_for
from .result import Solution
from .scheduler import Scheduler
from .types import Task, Usage

DEFAULT_CONCURRENCY = 16
"""How many tasks ``solve_many`` runs at once: enough to fill batches, few enough to keep
memory (trees, KV caches) bounded."""


class Runtime:
    def __init__(
        self,
        config: Config | None = None,
        *,
        registry: PluginRegistry | None = None,
        backend: Backend | None = None,
        **overrides: Any,
    ) -> None:
        """``config`` (or keyword overrides of the default :class:`Config`) picks the
        components. ``backend`` injects an already-built backend (tests, or an
        application sharing one model between runtimes)."""
        config = config or Config()
        self.config = config.replace(**overrides) if overrides else config
        self.registry = registry or get_registry()
        self._backend = backend
        self._components: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[Event], None]] = []
        self.validate()

    # -- components -------------------------------------------------------------------

    def validate(self, config: Config | None = None) -> None:
        """Fail fast on a bad name or argument: builds the cheap components (search,
        splitter, reflection triggers) and looks up the rest (which may load models)."""
        config = config or self.config
        self.registry.create("search", config.search, config)
        self.splitter(config)
        self.reflections(config)
        if config.verifier:
            self.registry.lookup("verifier", config.verifier)
        if self._backend is None:
            self.registry.lookup("backend", config.backend)

    def _component(self, kind: str, spec: str, config: Config | None = None) -> Any:
        with self._lock:
            key = (kind, spec)
            if key not in self._components:
                component = self.registry.create(kind, spec, config or self.config)
                component.spec = spec  # the name the user chose, for events and the tree
                self._components[key] = component
            return self._components[key]

    @property
    def backend(self) -> Backend:
        """The policy backend, built (and its model loaded) on first use."""
        if self._backend is None:
            self._backend = self._component("backend", self.config.backend)
        return self._backend

    def splitter(self, config: Config) -> Splitter:
        return self._component("splitter", config.splitter, config)

    def verifier(self, config: Config) -> Verifier | None:
        return self._component("verifier", config.verifier, config) if config.verifier else None

    def reflections(self, config: Config) -> list[tuple[str, ReflectionTrigger]]:
        return [(spec, self.registry.create("reflection", spec, config)) for spec in config.reflect]

    def close(self) -> None:
        """Release every component (models, containers, connections)."""
        with self._lock:
            components = list(self._components.values())
            self._components.clear()
        if self._backend is not None and self._backend not in components:
            components.append(self._backend)
        for component in components:
            try:
                component.close()
            except Exception as exc:  # closing must not mask the real outcome
                get_logger().warning("close failed", component=type(component).__name__, error=str(exc))

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- events -----------------------------------------------------------------------

    def subscribe(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``listener`` with every event of this runtime's runs (in the event loop).
        Returns a function that unsubscribes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def emit(self, event: Event) -> None:
        try:
            self.registry.pm.hook.reason_on_event(event=event)
        except Exception as exc:  # an observer must never break a run
            get_logger().warning("event hook failed", event=event.kind, error=str(exc))
        for listener in list(self._listeners):
            listener(event)

    # -- solving ----------------------------------------------------------------------

    def solve(self, task: Task | str, **overrides: Any) -> Solution:
        """Solve one task (a :class:`Task` or a question string)."""
        return self.solve_many([task], **overrides)[0]

    def solve_many(
        self,
        tasks: Iterable[Task | str],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        on_solution: Callable[[Solution], None] | None = None,
        **overrides: Any,
    ) -> list[Solution]:
        """Solve many tasks with their requests batched together; returns solutions in
        task order. ``on_solution`` is called as each one finishes (e.g. to write it)."""
        return asyncio.run(self.asolve_many(tasks, concurrency=concurrency, on_solution=on_solution, **overrides))

    async def asolve_many(
        self,
        tasks: Iterable[Task | str],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        on_solution: Callable[[Solution], None] | None = None,
        **overrides: Any,
    ) -> list[Solution]:
        config = self.config.replace(**overrides) if overrides else self.config
        self.validate(config)
        task_list = [_as_task(t, i) for i, t in enumerate(tasks)]
        if concurrency < 1:
            raise UsageError(f"concurrency must be at least 1, got {concurrency}")
        solutions: list[Solution | None] = [None] * len(task_list)
        scheduler = Scheduler(backend_factory=lambda: self.backend, emit=self.emit)
        pending = iter(enumerate(task_list))
        workers = min(concurrency, len(task_list))

        async def worker() -> None:
            try:
                for index, task in pending:
                    solution = await self._run_one(task, config, scheduler)
                    solutions[index] = solution
                    if on_solution is not None:
                        on_solution(solution)
            finally:
                scheduler.leave()

        # Every worker is a participant from the start, so the first tick waits for all.
        scheduler.join(workers)
        loop_task = asyncio.create_task(scheduler.run())
        try:
            await asyncio.gather(*(worker() for _ in range(workers)))
        finally:
            loop_task.cancel()
            try:
                await loop_task
            except asyncio.CancelledError:
                pass
        return [s for s in solutions if s is not None]

    async def _run_one(self, task: Task, config: Config, scheduler: Scheduler) -> Solution:
        start = time.perf_counter()
        search: SearchPolicy = self.registry.create("search", config.search, config)
        prompt = self.backend.format_prompt(messages_for(task, config.system_prompt))
        ctx = SearchContext(
            task=task,
            config=config,
            prompt=prompt,
            scheduler=scheduler,
            splitter=self.splitter(config),
            verifier=self.verifier(config),
            reflections=self.reflections(config),
            emit=self.emit,
        )
        self.emit(SearchStarted(task_id=task.id, search=config.search, config=_summary(config)))
        try:
            outcome = await search.run(ctx)
        except Exception as exc:
            self.emit(SearchFailed(task_id=task.id, error=f"{type(exc).__name__}: {exc}"))
            raise
        seconds = time.perf_counter() - start
        ctx.add_usage(Usage(seconds=seconds))
        chosen = outcome.chosen
        solution = Solution(
            task=task,
            answer=chosen.answer if chosen else None,
            text=chosen.text if chosen else "",
            score=chosen.score if chosen else None,
            candidates=outcome.candidates,
            usage=ctx.usage,
            seconds=seconds,
            tree=ctx.tree,
            config=config.to_dict(),
            meta=outcome.meta,
        )
        self.emit(
            SearchFinished(
                task_id=task.id, answer=solution.answer, score=solution.score, usage=ctx.usage, seconds=seconds
            )
        )
        return solution

    async def stream(self, task: Task | str, **overrides: Any) -> AsyncIterator[Event]:
        """Solve ``task`` and yield its events as they happen. The last event is
        :class:`SearchFinished`; the solution is then in ``runtime.last_solution``."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        unsubscribe = self.subscribe(queue.put_nowait)
        solved: list[Solution] = []

        async def run() -> None:
            try:
                solved.extend(await self.asolve_many([task], **overrides))
            finally:
                queue.put_nowait(None)

        runner = asyncio.create_task(run())
        try:
            while (event := await queue.get()) is not None:
                yield event
            await runner  # re-raise a failure
            self.last_solution = solved[0]
        finally:
            unsubscribe()
            if not runner.done():
                runner.cancel()


def _as_task(task: Task | str, index: int) -> Task:
    if isinstance(task, Task):
        return task
    if not isinstance(task, str):
        raise UsageError(f"a task must be a reason.Task or a question string, got {type(task).__name__}")
    return Task(question=task, id=f"task-{index}")


def _summary(config: Config) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k in ("search", "backend", "splitter", "verifier", "n", "model")}

