"""The sandbox callers use: run a Python program in a hardened, throw-away container.

::

    from reason.sandboxes import Sandbox, Limits

    with Sandbox(Limits(timeout_s=5), pool_size=4) as sandbox:
        result = sandbox.run("print(sum(range(10)))")
        results = sandbox.run_many([code_a, code_b], max_workers=4)

By default every run gets a fresh container (from the warm pool when one is ready).
With ``reuse=True`` a run goes to a warm container whose supervisor runs programs one at
a time and resets it between them (:mod:`~reason.sandboxes.worker`): ~15 ms a run
instead of ~180 ms, the same hardening, and the same guarantee that nothing carries over,
checked after every run rather than given by a new container. Every container is removed
whatever happens: in ``finally`` for the run, by the pool's remover, at interpreter exit
for pools not closed, and by the sweep for processes that were killed outright.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs

from reason.errors import VerifierError
from reason.log import get_logger

from .container import create_started, execute, remove
from .engine import connect
from .image import require_image
from .limits import Limits
from .pool import WarmPool
from .result import RunResult
from .sweep import sweep
from .worker import Worker, WorkerLost

_live: weakref.WeakSet[Sandbox] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for sandbox in list(_live):
        sandbox.close()


class Sandbox:
    """Runs programs under ``limits``; ``pool_size`` containers are kept started ahead of
    need (0 = a cold container per run). ``reuse`` runs programs one after another in
    warm containers that are reset between runs, instead of one container per program.
    Connects, checks the image and sweeps leftovers of dead runs on first use; thread-safe."""

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        pool_size: int = 0,
        image: str | None = None,
        client: Any = None,
        max_workers: int = 4,
        reuse: bool = False,
    ) -> None:
        self.limits = limits or Limits()
        self.pool_size = pool_size
        self.max_workers = max_workers
        self.reuse = reuse
        self._image = image
        self._client = client
        self._pool: WarmPool[str] | None = None
        self._workers: WarmPool[Worker] | None = None
        self._idle: list[Worker] = []
        """Reusable workers between runs, the most recently used last."""
        self._lock = threading.Lock()
        self._started = False
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> Sandbox:
        """Connect, check the image, sweep orphans and fill the pool (idempotent)."""
        with self._lock:
            if self._closed:
                raise VerifierError("this sandbox was closed")
            if self._started:
                return self
            if self._client is None:
                self._client = connect(pool_size=max(16, 2 * self.max_workers + self.pool_size + 4))
            self._image = require_image(self._client, self._image)
            sweep(self._client)
            if self.reuse:
                if self.pool_size > 0:
                    self._workers = WarmPool(self._new_worker, Worker.close, self.pool_size)
            elif self.pool_size > 0:
                self._pool = WarmPool(self._new_container, self._remove, self.pool_size)
            self._started = True
            _live.add(self)
        return self

    def close(self) -> None:
        """Remove the pool's containers. Runs in flight finish their own cleanup."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, None
            workers, self._workers = self._workers, None
            idle, self._idle = self._idle, []
        for each in (pool, workers):
            if each is not None:
                each.close()
        for worker in idle:
            worker.close()
        _live.discard(self)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def client(self) -> Any:
        return self.start()._client

    @property
    def image(self) -> str:
        self.start()
        assert self._image is not None
        return self._image

    @property
    def pool(self) -> WarmPool[str] | WarmPool[Worker] | None:
        """The containers started ahead of need (workers, with ``reuse``)."""
        return self._workers if self.reuse else self._pool

    # -- running --------------------------------------------------------------------

    def run(
        self,
        code: str,
        stdin: bytes | str = b"",
        *,
        timeout_s: float | None = None,
        output_bytes: int | None = None,
    ) -> RunResult:
        """Run ``code`` with ``python3`` and return how it went. ``timeout_s`` and
        ``output_bytes`` override the sandbox's limits for this run (they are not baked
        into the container, unlike memory, CPU and pids)."""
        self.start()
        limits = self.limits
        if timeout_s is not None or output_bytes is not None:
            limits = attrs.evolve(
                limits,
                timeout_s=timeout_s if timeout_s is not None else limits.timeout_s,
                output_bytes=output_bytes if output_bytes is not None else limits.output_bytes,
            )
        data = stdin.encode() if isinstance(stdin, str) else bytes(stdin)
        import docker.errors
        import requests.exceptions

        if self.reuse:
            return self._run_reusing(code, data, limits)
        pool = self._pool
        container_id = pool.take() if pool is not None else None
        with _engine_errors():
            try:
                return self._run_in(container_id, code, data, limits)
            except (docker.errors.APIError, requests.exceptions.ConnectionError) as exc:
                if container_id is None:
                    raise
                # A pooled container can die while it waits (an engine restart): use a fresh one.
                get_logger().warning("sandbox pool container unusable, starting a fresh one", error=str(exc))
                return self._run_in(None, code, data, limits)

    def run_many(self, programs: Sequence[str], max_workers: int | None = None) -> list[RunResult]:
        """Run several programs, at most ``max_workers`` at a time; results in order."""
        self.start()
        workers = max(1, min(max_workers or self.max_workers, len(programs) or 1))
        if workers == 1:
            return [self.run(code) for code in programs]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox-run") as executor:
            return list(executor.map(self.run, programs))

    def _run_in(self, container_id: str | None, code: str, stdin: bytes, limits: Limits) -> RunResult:
        client = self._client
        if container_id is None:
            container_id = create_started(client, self.image, self.limits)
        try:
            return execute(client, container_id, code, stdin, limits)
        finally:
            pool = self._pool
            if pool is not None:
                pool.discard(container_id)
            else:
                remove(client, container_id)

    def _run_reusing(self, code: str, stdin: bytes, limits: Limits) -> RunResult:
        worker, warm = self._take_worker()
        try:
            with _engine_errors():
                try:
                    result = worker.run(code, stdin, limits)
                except WorkerLost as exc:
                    if not warm:
                        raise
                    # A warm container can die while it waits (an engine restart): use a fresh one.
                    get_logger().warning("sandbox worker unusable, starting a fresh one", error=str(exc))
                    worker = self._new_worker()
                    result = worker.run(code, stdin, limits)
        except WorkerLost as exc:  # the worker closed itself
            raise VerifierError(f"the sandbox container ended without an answer: {exc}") from exc
        except BaseException:
            worker.close()
            raise
        self._give_back(worker)
        return result

    def _take_worker(self) -> tuple[Worker, bool]:
        """An idle worker, a warm one from the pool, or a new one; and whether it had been
        waiting (and so may have died meanwhile)."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        warm = self._workers.take() if self._workers is not None else None
        if warm is not None:
            return warm, True
        return self._new_worker(), False

    def _give_back(self, worker: Worker) -> None:
        with self._lock:
            if worker.usable and not self._closed and len(self._idle) < max(self.pool_size, self.max_workers):
                self._idle.append(worker)
                return
        if self._workers is not None and not worker.usable:
            self._workers.discard(worker)  # removed in the background, off the caller's path
        else:
            worker.close()

    def _new_worker(self) -> Worker:
        assert self._image is not None
        return Worker(self._client, self._image, self.limits)

    def _new_container(self) -> str:
        assert self._image is not None  # the pool fills once start() has found the image
        return create_started(self._client, self._image, self.limits)

    def _remove(self, container_id: str) -> None:
        remove(self._client, container_id)


@contextlib.contextmanager
def _engine_errors() -> Iterator[None]:
    """The Docker SDK's failures as the one error a sandbox's caller handles."""
    import docker.errors
    import requests.exceptions

    try:
        yield
    except docker.errors.DockerException as exc:
        raise VerifierError(f"the sandbox run failed in the Docker engine: {exc}") from exc
    except requests.exceptions.RequestException as exc:
        raise VerifierError(f"lost the connection to the Docker engine: {exc}") from exc
