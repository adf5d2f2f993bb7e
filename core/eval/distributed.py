"""``reason eval --ray``: problems solved by Ray actors across a cluster; the driver grades
and writes them exactly as a single-machine run does.

Each worker is a Ray actor holding one long-lived :class:`reason.Runtime` built from the
driver's :class:`~reason.Config` (so ``-o`` options and recipes apply to every worker),
with its own backend: an in-process model per worker (and per GPU with
``--worker-gpus 1``), or an ``openai`` backend that every worker points at the same
server. :class:`RayPool` solves like a Runtime (``solve_many`` with ``on_solution``), so
:meth:`reason.eval.run.EvalRun.run` drives it unchanged: only the driver writes
results.jsonl, in the order problems finish, with the same crash safety and ``--resume``.

Each problem is one actor call, ``concurrency`` in flight per worker (their requests
share that worker's batch); the next is handed to whichever worker frees a slot first.
Per-sample seeds (:func:`reason.types.sample_seed`) make a seeded problem's result
independent of which worker solves it and of what else is in its batch. A worker that
dies (killed, out of memory, its node lost) fails its calls with ``RayActorError``; those
problems go back to the front of the queue for the workers still alive. The driver
delivers a problem once, whatever comes back, so nothing is lost or written twice.

Ray is an optional extra (``pip install 'reason-runtime[ray]'``) imported only here,
and only when ``--ray`` is given.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from attrs import define, field

from reason import Config, Runtime, Solution, Task
from reason.errors import ReasonError, UsageError
from reason.log import get_logger
from reason.runtime import DEFAULT_CONCURRENCY

RAY_MISSING = "--ray needs Ray, which is not installed: pip install 'reason-runtime[ray]'"

LOCAL = "local"
"""The address that starts a new local Ray instance (``--ray`` without a value)."""


def import_ray() -> Any:
    """Ray, or a :class:`UsageError` (one line, exit 2) saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    return ray


class EvalWorker:
    """The body of one Ray actor: a Runtime that solves the problems it is handed.

    Async, so the calls in flight on one worker run concurrently and their requests batch
    in its Runtime, as ``solve_many``'s do on one machine."""

    def __init__(self, config: Config) -> None:
        self.runtime = Runtime(config)

    def ready(self) -> dict[str, Any]:
        """Load the model (the driver waits for every worker before the clock starts)."""
        import ray

        self.runtime.backend.load()
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}

    async def solve(self, task: Task) -> tuple[Solution, float]:
        """The solution, and when it was ready (wall clock) for the driver's hand-off time."""
        solution = await self.runtime.asolve(task)
        return solution, time.time()

    def close(self) -> None:
        self.runtime.close()


@define
class PoolStats:
    """What a pool did: problems delivered, problems re-run after a worker died, and the
    seconds from a worker's solution being ready to the driver having handled it (the
    driver's overhead per problem, transfer included; clocks of different nodes may
    disagree by a little)."""

    delivered: int = 0
    rerun: int = 0
    workers_lost: int = 0
    handoff_seconds: list[float] = field(factory=list)


@define(eq=False)
class _Worker:
    handle: Any
    name: str
    busy: int = 0
    alive: bool = True


class RayPool:
    """Ray workers that solve like a :class:`~reason.Runtime`: ``with RayPool(config) as
    pool: pool.load(); pool.solve_many(tasks, on_solution=...)``.

    ``address``: ``"local"`` starts a Ray instance for this run (stopped at :meth:`close`),
    ``"auto"`` joins the cluster running on this machine, ``HOST:PORT`` or
    ``ray://HOST:PORT`` a remote one; when Ray is already initialized in this process,
    its connection is used as is. ``workers`` defaults to as many as the cluster's CPUs
    (or GPUs, with ``gpus``) fit."""

    def __init__(
        self,
        config: Config,
        address: str = LOCAL,
        workers: int | None = None,
        cpus: float = 1.0,
        gpus: float = 0.0,
    ) -> None:
        self._ray = import_ray()
        if workers is not None and workers < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}")
        if cpus < 0 or gpus < 0 or (cpus == 0 and gpus == 0):
            raise UsageError(f"a worker needs some CPU or GPU (--worker-cpus {cpus}, --worker-gpus {gpus})")
        Runtime(config).close()  # a bad name or option fails here, once, not in every worker
        self.config = config
        self.address = address
        self.count = workers
        self.cpus = cpus
        self.gpus = gpus
        self.stats = PoolStats()
        self.workers: list[_Worker] = []
        self._owns_connection = False
        self._log = get_logger()

    # -- the cluster ------------------------------------------------------------------

    def start(self) -> None:
        """Connect to (or start) Ray and create the workers; their models load in the
        background until :meth:`load`."""
        ray = self._ray
        if not ray.is_initialized():
            import logging

            kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
            if self.address == LOCAL:
                kwargs["include_dashboard"] = False  # nobody looks at it during an eval; it costs memory
            try:
                ray.init(address=self.address, **kwargs)
            except ConnectionError as exc:
                raise UsageError(f"--ray {self.address}: no Ray cluster there ({exc})") from None
            self._owns_connection = True
        count = self.count or self._fits()
        if count > self._fits():
            self._log.warning(
                "more ray workers than the cluster fits now; some wait for resources", workers=count, fits=self._fits()
            )
        actor = ray.remote(EvalWorker).options(
            num_cpus=self.cpus,
            num_gpus=self.gpus,
            max_restarts=0,  # a lost worker's problems are re-run on the others, by the driver
            scheduling_strategy="SPREAD",  # one per node first: a lost node takes fewer workers with it
        )
        self.workers = [_Worker(actor.remote(self.config), f"worker-{i}") for i in range(count)]

    def _fits(self) -> int:
        resources = self._ray.cluster_resources()
        fits = [int(resources.get("CPU", 0) // self.cpus)] if self.cpus else []
        if self.gpus:
            fits.append(int(resources.get("GPU", 0) // self.gpus))
        return max(1, min(fits))

    def load(self) -> None:
        """Wait until every worker has loaded its model. A worker that fails to start is
        dropped if others did start; if none did, its error is raised."""
        ray = self._ray
        if not self.workers:
            self.start()
        refs = {w.handle.ready.remote(): w for w in self.workers if w.alive}
        failure: BaseException | None = None
        for ref, worker in refs.items():
            try:
                info = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                failure = _cause(exc)
                self._drop(worker, str(failure))
            except ray.exceptions.RayActorError as exc:
                failure = exc
                self._drop(worker, "died while starting")
            else:
                self._log.info("ray worker ready", worker=worker.name, **info)
        if not any(w.alive for w in self.workers):
            assert failure is not None
            raise failure

    def close(self) -> None:
        """Close every worker's Runtime (models, containers, connections), end the actors,
        and disconnect (stopping the Ray instance this pool started)."""
        ray = self._ray
        alive = [w for w in self.workers if w.alive]
        if alive:
            try:
                ray.get([w.handle.close.remote() for w in alive], timeout=30)
            except Exception as exc:  # closing must not mask the run's outcome
                self._log.warning("ray workers did not close cleanly", error=str(exc))
        for worker in self.workers:
            try:
                ray.kill(worker.handle)
            except Exception:  # dead already
                pass
        self.workers = []
        if self._owns_connection:
            ray.shutdown()
            self._owns_connection = False

    def __enter__(self) -> RayPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drop(self, worker: _Worker, why: str) -> None:
        if worker.alive:
            worker.alive = False
            self.stats.workers_lost += 1
            self._log.warning("ray worker lost", worker=worker.name, why=why, then="its problems go to the others")

    # -- solving ----------------------------------------------------------------------

    def solve_many(
        self,
        tasks: Iterable[Task],
        *,
        concurrency: int | None = None,
        on_solution: Callable[[Solution], None] | None = None,
    ) -> list[Solution]:
        """Solve ``tasks`` on the workers, ``concurrency`` in flight on each; returns the
        solutions in task order. ``on_solution`` is called in this thread as each one
        arrives, once per task even when a worker died with it in flight."""
        concurrency = DEFAULT_CONCURRENCY if concurrency is None else concurrency
        if concurrency < 1:
            raise UsageError(f"concurrency must be at least 1, got {concurrency}")
        ray = self._ray
        task_list = list(tasks)
        queue: deque[int] = deque(range(len(task_list)))
        inflight: dict[Any, tuple[_Worker, int]] = {}
        solutions: list[Solution | None] = [None] * len(task_list)
        try:
            while queue or inflight:
                self._dispatch(task_list, queue, inflight, concurrency)
                if not inflight:
                    raise ReasonError(  # the CLI's one line; --resume continues the run
                        f"every Ray worker was lost; {len(queue)} problem(s) unsolved (finished ones are saved)"
                    )
                (ref,), _ = ray.wait(list(inflight), num_returns=1)
                worker, index = inflight.pop(ref)
                worker.busy -= 1
                try:
                    solution, ready_at = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
                    # the worker died with it (or with its result, on a lost node)
                    self._drop(worker, type(exc).__name__)
                    queue.appendleft(index)
                    self.stats.rerun += 1
                    continue
                except ray.exceptions.RayTaskError as exc:
                    raise _cause(exc) from exc  # the search's own error, as on one machine
                if solutions[index] is not None:
                    continue  # delivered already: never written twice
                solutions[index] = solution
                if on_solution is not None:
                    on_solution(solution)
                self.stats.delivered += 1
                self.stats.handoff_seconds.append(max(0.0, time.time() - ready_at))
        finally:
            for ref in inflight:  # a failure or Ctrl-C: free the workers' engines
                try:
                    ray.cancel(ref)
                except Exception:  # its worker is gone already
                    pass
        return [s for s in solutions if s is not None]

    def _dispatch(
        self, tasks: Sequence[Task], queue: deque[int], inflight: dict[Any, tuple[_Worker, int]], concurrency: int
    ) -> None:
        """Hand queued problems to the least busy live workers, up to ``concurrency`` each."""
        while queue:
            free = [w for w in self.workers if w.alive and w.busy < concurrency]
            if not free:
                return
            worker = min(free, key=lambda w: w.busy)
            index = queue.popleft()
            inflight[worker.handle.solve.remote(tasks[index])] = (worker, index)
            worker.busy += 1


def _cause(error: Any) -> BaseException:
    """The exception a worker raised, as it was raised there (a ``BackendError`` stays one,
    and the CLI prints it in one line); Ray's wrapper, with the remote traceback, is its
    ``__cause__``."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error
