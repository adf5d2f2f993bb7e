"""The Runtime: long-lived; owns the components, their engines, and the event loop that
runs every search.

::

    from reason import Runtime

    with Runtime(search="best-of-n", n=8) as rt:
        solution = rt.solve("What is 17 * 23?")
        print(solution.answer, solution.usage)

The backend is built once per Runtime (it loads its model on first use), and its
settings are fixed; splitters and verifiers are built per effective config, the part
of a solve's config that matters to each (:mod:`reason.component_cache`), and reused by
every solve with that config; the search policy is built per task, and can run a
sub-policy through the runtime (:meth:`SearchContext.run_policy`). Every run's options
are checked against what its components declare (:mod:`reason.options`).

Searches run on one event loop in a thread of the Runtime's own, whoever calls:
``solve`` from several threads, ``asolve`` from an application's event loop,
``solve_many`` for a whole dataset. All of them feed the same engines, so their requests
share one batch (see :mod:`reason.engine`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import queue
import threading
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from .aio import LoopThread, gather_all
from .component_cache import ComponentCache, check_backend
from .components import Backend, Component, ReflectionTrigger, SearchPolicy, Splitter, Verifier
from .config import Config
from .context import PolicyParts, RunningSearch
from .engine import Engines
from .errors import UsageError
from .events import Event, SearchFailed, SearchFinished, SearchStarted
from .filling import Filling
from .log import get_logger
from .options import check_options, run_parts
from .plan import Plan
from .prompts import messages_for
from .registry import PluginRegistry, get_registry
from .result import Solution
from .run import Run
from .types import Task, Usage

T = TypeVar("T")

DEFAULT_CONCURRENCY = 16
"""How many tasks ``solve_many`` keeps in flight where the engine does not say its rows:
enough to fill batches, few enough to keep memory (trees, KV caches) bounded."""

MAX_POLICY_DEPTH = 3
"""How deep sub-policies may nest (a policy that runs a policy that runs one ...)."""

PLANS_KEPT = 128
"""Checked configs remembered (serve gives every request a config of its own seed)."""


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
        application sharing one model between runtimes); its owner closes it, not
        :meth:`close`."""
        config = config or Config()
        self.config = config.replace(**overrides) if overrides else config
        self.registry = registry or get_registry()
        self._backend = backend
        self._cache = ComponentCache(self.registry, self._adopt)
        self._lock = threading.RLock()
        self._listeners: list[Callable[[Event], None]] = []
        self._io: LoopThread | None = None
        self._engines: Engines | None = None
        self._plans: collections.OrderedDict[tuple[str, bool], Plan] = collections.OrderedDict()
        if backend is not None:
            backend.emitter = self._emit_threadsafe
        self.plan()

    # -- components -------------------------------------------------------------------

    def validate(self, config: Config | None = None, *, sub_policy: bool = False) -> list[Config]:
        """Fail fast on a bad name, argument or option: builds the cheap components
        (search, splitter, reflection triggers), looks up the rest (which may load
        models), and checks the options against what the run's components declare
        (:mod:`reason.options`). Returns the configs the run may use: ``config``,
        then its sub-policies' (:meth:`SearchPolicy.sub_configs`). A ``sub_policy``'s
        config carries its caller's options too, so only their values are checked:
        which keys a run takes was checked against the whole run when it started."""
        return list(self.plan(config, sub_policy=sub_policy).configs)

    def plan(self, config: Config | None = None, *, sub_policy: bool = False) -> Plan:
        """``config`` checked (see :meth:`validate`) once: every solve with an equal config
        reuses the plan (the last ``PLANS_KEPT`` configs are remembered)."""
        config = config or self.config
        key = (json.dumps(config.to_dict(), sort_keys=True, default=str), sub_policy)
        with self._lock:
            if (plan := self._plans.get(key)) is not None:
                self._plans.move_to_end(key)
                return plan
        plan = self._check(config, sub_policy)
        with self._lock:
            self._plans[key] = plan
            while len(self._plans) > PLANS_KEPT:
                self._plans.popitem(last=False)
        return plan

    def _check(self, config: Config, sub_policy: bool) -> Plan:
        parts = run_parts(self.registry, [config], self._backend)
        check_options(config, parts, self.registry, unknown=False)  # bad values first, named with their component
        policies = self._policies(config)
        configs = [c for c, _ in policies]
        check_options(config, run_parts(self.registry, configs, self._backend), self.registry, unknown=not sub_policy)
        check_backend(parts[0].options, self.config, config, parts[0].name)
        for each in configs:
            self.splitter(each)
            self.reflections(each)
        policy = policies[0][1]
        return Plan(config=config, configs=tuple(configs), width=max(1, policy.width), spare=[policy])

    def _policies(self, config: Config, depth: int = 0) -> list[tuple[Config, SearchPolicy]]:
        """``config`` and, recursively, the configs of the sub-policies its search runs,
        each with the policy built to ask it."""
        policy: SearchPolicy = self.registry.create("search", config.search, config)
        subs = list(policy.sub_configs())
        if subs and depth >= MAX_POLICY_DEPTH:
            raise UsageError(f"search {config.search}: sub-policies nest deeper than {MAX_POLICY_DEPTH} levels")
        return [(config, policy), *(each for sub in subs for each in self._policies(sub, depth + 1))]

    def _adopt(self, component: Component, spec: str) -> None:
        component.adopt(spec, self._emit_threadsafe)  # engines report from their threads

    @property
    def backend(self) -> Backend:
        """The policy backend, built (and its model loaded) on first use."""
        if self._backend is None:
            self._backend = self._cache.get("backend", self.config.backend, self.config)
        return self._backend

    def splitter(self, config: Config) -> Splitter:
        """The splitter for ``config``: one per distinct config that matters to it."""
        return self._cache.get("splitter", config.splitter, config)

    def verifier(self, config: Config) -> Verifier | None:
        """The verifier for ``config`` (None without one): one per distinct config that
        matters to it, so a solve with other verifier options gets its own."""
        return self._cache.get("verifier", config.verifier, config) if config.verifier else None

    def reflections(self, config: Config) -> list[tuple[str, ReflectionTrigger]]:
        return [(spec, self.registry.create("reflection", spec, config)) for spec in config.reflect]

    def _parts(self, plan: Plan) -> PolicyParts:
        """What a search with ``plan``'s config runs with: a fresh policy, and the
        splitter, verifier and reflection triggers for that config."""
        config = plan.config
        return PolicyParts(plan.policy(self.registry), self.splitter(config), self.verifier(config), self.reflections(config))

    def _sub_policy_parts(self, config: Config) -> PolicyParts:
        """:meth:`SearchContext.run_policy` comes here: a sub-policy's parts, its config
        checked (once) as a sub-policy's."""
        return self._parts(self.plan(config, sub_policy=True))

    def close(self) -> None:
        """Stop every running search, the event loop, and release every component
        (models, containers, connections)."""
        self._stop_loop()
        self._cache.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the event loop -----------------------------------------------------------------

    def _ensure_loop(self) -> LoopThread:
        """The Runtime's event loop, started on first use in a daemon thread."""
        with self._lock:
            if self._io is None:
                self._io = LoopThread("reason-runtime")
                self._engines = Engines(lambda: self.backend, self.emit)
            return self._io

    def _stop_loop(self) -> None:
        with self._lock:
            io, engines = self._io, self._engines
            self._io = self._engines = None
        if io is None:
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if not io.is_current:  # (closed from a callback on the loop itself: it keeps running)
            try:
                io.submit(cancel_all()).result(timeout=30)
            except Exception as exc:  # a search that ignores cancellation must not hang close()
                get_logger().warning("searches did not stop", error=str(exc))
            io.stop()
        if engines is not None:
            engines.close()

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return self._ensure_loop().submit(coro)

    # -- events -----------------------------------------------------------------------

    def subscribe(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``listener`` with every event of this runtime's runs, in the runtime's
        event-loop thread (keep it quick). Returns a function that unsubscribes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def emit(self, event: Event) -> None:
        # Each observer in its own guard: through the hook caller, the first one to raise
        # would hide the event from every observer after it.
        for impl in reversed(self.registry.pm.hook.reason_on_event.get_hookimpls()):
            try:
                impl.function(**({"event": event} if "event" in impl.argnames else {}))
            except Exception as exc:  # an observer must never break a run
                get_logger().warning("event hook failed", plugin=impl.plugin_name, event_kind=event.kind, error=str(exc))
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception as exc:  # a subscriber must not break a run either
                get_logger().warning("event listener failed", event_kind=event.kind, error=str(exc))

    def _emit_threadsafe(self, event: Event) -> None:
        """``emit`` from any thread: events reach observers in the event-loop thread."""
        io = self._io
        if io is None:
            return
        if io.is_current:
            self.emit(event)
        else:
            io.call_soon(self.emit, event)

    # -- solving ----------------------------------------------------------------------

    def solve(self, task: Task | str, **overrides: Any) -> Solution:
        """Solve one task (a :class:`Task` or a question string). Safe to call from many
        threads at once: their searches share the engines."""
        return self.solve_many([task], **overrides)[0]

    def concurrency_for(self, config: Config | None = None) -> int:
        """How many problems :meth:`solve_many` keeps in flight when not told: twice the
        engine's rows over the search's width (a step search holds its rows only part of
        the time: between rounds, and while its paths are scored), at most the rows;
        ``DEFAULT_CONCURRENCY`` where the engine does not say its rows. More start while
        the engine's rows are idle (:meth:`filling_for`). Loads the backend."""
        return self.filling_for(config).floor

    def filling_for(self, config: Config | None = None, concurrency: int | None = None) -> Filling:
        """When :meth:`solve_many` starts the next problem: :meth:`concurrency_for`'s
        number at once, then one more whenever the engine has idle rows for a whole
        problem and no path waits for a verifier (see :class:`~reason.filling.Filling`),
        up to the engine's rows; exactly ``concurrency`` at a time where given. Loads the
        backend."""
        width = self.plan(config or self.config).width
        if concurrency is not None:
            return Filling(concurrency, concurrency, width)
        backend = self.backend
        backend.load()
        rows = backend.rows
        if not rows:
            return Filling(DEFAULT_CONCURRENCY, DEFAULT_CONCURRENCY, width)
        floor = max(1, min(rows, -(-2 * rows // width)))
        return Filling(floor, rows, width, spare=lambda: rows - self._sequences(), verifying=self._verifying)

    def _sequences(self) -> int:
        """Sequences the runtime's searches have asked of the backend and not got back."""
        return self._engines.sequences if self._engines is not None else 0

    def _verifying(self) -> int:
        """Paths the runtime's searches have sent to verifiers and not got scored."""
        return self._engines.verifying if self._engines is not None else 0

    def solve_many(
        self,
        tasks: Iterable[Task | str],
        *,
        concurrency: int | None = None,
        on_solution: Callable[[Solution], None] | None = None,
        **overrides: Any,
    ) -> list[Solution]:
        """Solve many tasks, ``concurrency`` at a time (default: as many as fill the
        engine, :meth:`filling_for`), their requests batched together; returns solutions
        in task order. ``on_solution`` is called in this thread as each one finishes
        (e.g. to write it), in the order they finish."""
        plan, task_list, filling = self._prepare(tasks, concurrency, overrides)
        finished: queue.Queue[tuple[int, Solution] | None] = queue.Queue()
        future = self._submit(self._solve_all(task_list, plan, filling, lambda i, s: finished.put((i, s))))
        future.add_done_callback(lambda _: finished.put(None))
        solutions: list[Solution | None] = [None] * len(task_list)
        try:
            while (item := finished.get()) is not None:
                index, solution = item
                solutions[index] = solution
                if on_solution is not None:
                    on_solution(solution)
            future.result()  # re-raise a failure
        except BaseException:
            future.cancel()  # a caller gone (Ctrl-C, a failing callback): free the engine
            raise
        return [s for s in solutions if s is not None]

    async def asolve(self, task: Task | str, **overrides: Any) -> Solution:
        """``solve`` for a caller with an event loop of its own."""
        return (await self.asolve_many([task], **overrides))[0]

    async def asolve_many(
        self,
        tasks: Iterable[Task | str],
        *,
        concurrency: int | None = None,
        on_solution: Callable[[Solution], None] | None = None,
        **overrides: Any,
    ) -> list[Solution]:
        """``solve_many`` for a caller with an event loop of its own (``on_solution`` is
        called in that loop). Cancelling the await cancels the searches."""
        plan, task_list, filling = self._prepare(tasks, concurrency, overrides)
        caller = asyncio.get_running_loop()

        def deliver(index: int, solution: Solution) -> None:
            if on_solution is not None:
                _call_in(caller, on_solution, solution)

        solutions = await asyncio.wrap_future(self._submit(self._solve_all(task_list, plan, filling, deliver)))
        return solutions

    def stream(self, task: Task | str, *, tokens: bool = False, **overrides: Any) -> Run:
        """Solve ``task`` as a :class:`~reason.run.Run`: iterate it for the search's events
        as they happen (the last is :class:`SearchFinished`), then read ``run.solution``.
        Closing the run early cancels the search. ``tokens=True`` adds
        :class:`TextGenerated` events with each sample's text as it grows (on backends
        that stream text). The search starts when the first event is asked for."""
        return Run(self._stream(task, tokens, overrides))

    async def _stream(self, task: Task | str, tokens: bool, overrides: dict[str, Any]) -> AsyncGenerator[Event | Solution, None]:
        plan, (one,), _ = self._prepare([task], 1, overrides)
        caller = asyncio.get_running_loop()
        events: asyncio.Queue[Event | None] = asyncio.Queue()
        observe = lambda e: _call_in(caller, events.put_nowait, e)  # noqa: E731
        future = self._submit(self._run_one(one, plan, observe=observe, stream_text=tokens))
        future.add_done_callback(lambda _: _call_in(caller, events.put_nowait, None))
        try:
            while (event := await events.get()) is not None:
                yield event
            yield future.result()
        finally:
            future.cancel()

    def _prepare(
        self, tasks: Iterable[Task | str], concurrency: int | None, overrides: dict[str, Any]
    ) -> tuple[Plan, list[Task], Filling]:
        config = self.config.replace(**overrides) if overrides else self.config
        plan = self.plan(config)
        if concurrency is not None and concurrency < 1:
            raise UsageError(f"concurrency must be at least 1, got {concurrency}")
        task_list = [_as_task(t, i) for i, t in enumerate(tasks)]
        if task_list:
            # Building components may load models, and the first prompt loads a tokenizer
            # (or asks a server): done here, in the caller's thread, so that the event
            # loop every search shares never waits on it. Sub-policies' verifiers too.
            self._prompt(task_list[0], config)
            for each in plan.configs:
                self.verifier(each)
        if len(task_list) <= 1:
            concurrency = 1
        return plan, task_list, self.filling_for(config, concurrency)

    async def _solve_all(
        self, tasks: list[Task], plan: Plan, filling: Filling, deliver: Callable[[int, Solution], None]
    ) -> list[Solution]:
        """Start the tasks as ``filling`` lets them (the next the moment one finishes, or
        the engine has idle rows). One failure cancels the rest and is raised."""
        solutions: list[Solution | None] = [None] * len(tasks)

        async def one(index: int, task: Task) -> None:
            await filling.enter()
            asked = False
            try:
                solutions[index] = solution = await self._run_one(task, plan)
                asked = solution.usage.sequences > 0
            finally:
                filling.leave(asked)
            deliver(index, solution)

        assert self._engines is not None
        stop = self._engines.watch_sequences(filling.engine_changed)
        try:
            await gather_all(*(one(i, t) for i, t in enumerate(tasks)))
        finally:
            stop()
        return [s for s in solutions if s is not None]

    def _prompt(self, task: Task, config: Config) -> str:
        return self.backend.format_prompt(messages_for(task, config.system_prompt))

    async def _run_one(
        self, task: Task, plan: Plan, observe: Callable[[Event], None] | None = None, stream_text: bool = False
    ) -> Solution:
        start = time.perf_counter()
        assert self._engines is not None
        config = plan.config
        parts = self._parts(plan)

        def emit(event: Event) -> None:
            self.emit(event)
            if observe is not None:
                observe(event)

        ctx = RunningSearch(
            task=task,
            config=config,
            prompt=self._prompt(task, config),
            engines=self._engines,
            splitter=parts.splitter,
            verifier=parts.verifier,
            reflections=parts.reflections,
            emit=emit,
            policies=self._sub_policy_parts,
        )
        ctx.stream_text = stream_text
        emit(SearchStarted(task_id=task.id, search=config.search, config=_summary(config)))
        try:
            outcome = await parts.search.run(ctx)
        except asyncio.CancelledError:
            emit(SearchFailed(task_id=task.id, error="cancelled"))
            raise
        except Exception as exc:
            emit(SearchFailed(task_id=task.id, error=f"{type(exc).__name__}: {exc}"))
            raise
        seconds = time.perf_counter() - start
        ctx.add_usage(Usage(seconds=seconds))
        chosen = outcome.chosen
        ctx.tree.chosen = chosen.node_id if chosen else None
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
            node_id=ctx.tree.chosen,
        )
        emit(SearchFinished(task_id=task.id, answer=solution.answer, score=solution.score, usage=ctx.usage, seconds=seconds))
        return solution


def _call_in(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """Call ``fn(*args)`` in ``loop``'s thread (a caller's loop that has closed meanwhile
    gets nothing: nobody is listening any more)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass


def _as_task(task: Task | str, index: int) -> Task:
    if isinstance(task, Task):
        return task
    if not isinstance(task, str):
        raise UsageError(f"a task must be a reason.Task or a question string, got {type(task).__name__}")
    return Task(question=task, id=f"task-{index}")


def _summary(config: Config) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k in ("search", "backend", "splitter", "verifier", "n", "model")}
