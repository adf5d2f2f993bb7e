"""A reusable container: the supervisor (``supervisor.py``) as its PID 1, serving programs
one at a time over one attach stream, resetting the container between them.

A fresh container per program costs a create, a start and a removal (~170 ms of the
engine's CPU on 2 cores); a worker pays that once per ``MAX_RUNS`` programs. The hardening
is the same container spec; what a fresh container gave for free (nothing carries over)
the supervisor restores and checks after every run, and the worker is thrown away
whenever it cannot (see the supervisor's docstring for why a hostile program of the same
uid cannot get in its way).
"""

from __future__ import annotations

import functools
import json
import socket
import struct
import time
from pathlib import Path
from typing import Any

from .container import DOCKER_FRAME, CappedOutput, capped_result, container_spec, kill, remove, send_input, take_frames
from .limits import Limits
from .result import RunResult

MAX_RUNS = 500
"""Programs one container serves before it is replaced anyway (bounds what a reset might miss)."""
GRACE_S = 5.0
"""How long past a program's time limit the host waits for the supervisor's answer before
it kills the container itself."""

_FRAME = struct.Struct(">cL")


class WorkerLost(Exception):
    """The container stopped answering: it is gone and the run had no result."""


@functools.cache
def supervisor_source() -> str:
    return Path(__file__).with_name("supervisor.py").read_text()


def worker_spec(client: Any, image: str, limits: Limits) -> dict[str, Any]:
    """The hardened container spec, with the supervisor as its command."""
    return {**container_spec(client, image, limits), "command": ["python3", "-I", "-c", supervisor_source()]}


class Worker:
    """One started container and the attach stream its supervisor talks on. Not
    thread-safe: one run at a time (the sandbox hands a worker to one caller)."""

    def __init__(self, client: Any, image: str, limits: Limits) -> None:
        self.client = client
        self.limits = limits
        self.runs = 0
        self.usable = True
        self.container_id = client.api.create_container(**worker_spec(client, image, limits))["Id"]
        try:
            # Attached before start: nothing the supervisor writes can be missed.
            self._sock = client.api.attach_socket(self.container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            self._raw: socket.socket = getattr(self._sock, "_sock", self._sock)
            client.api.start(self.container_id)
        except BaseException:
            remove(client, self.container_id)
            raise
        self._docker = bytearray()  # docker's multiplexed frames, not yet split
        self._stdout = bytearray()  # the supervisor's stdout, not yet split into its frames
        self._stderr = bytearray()  # the supervisor's own complaints (a traceback, if it died)

    def __repr__(self) -> str:
        return f"Worker({(self.container_id or 'removed')[:12]}, runs={self.runs})"

    def run(self, code: str, stdin: bytes, limits: Limits) -> RunResult:
        """Run one program; raises :class:`WorkerLost` if the container ends without an
        answer. At the host's deadline the container is killed and the run timed out."""
        payload = code.encode()
        self.runs += 1
        header = f"{len(payload)} {len(stdin)} {limits.timeout_s}\n".encode()
        out, err = CappedOutput(limits.output_bytes), CappedOutput(limits.output_bytes)
        start = time.monotonic()
        writer = send_input(self._raw, header + payload + stdin, half_close=False)
        try:
            answer = self._read_until_answer(out, err, start + limits.timeout_s + GRACE_S)
        except WorkerLost:
            self.close()
            raise
        finally:
            if writer is not None:
                writer.join(timeout=5)
        if answer is None:  # the supervisor missed its own deadline: stop everything here
            self.close()
            return capped_result(out, err, exit_code=137, timed_out=True, duration_s=time.monotonic() - start)
        oom = answer["oom_killed"]
        if oom is None:  # no cgroup counter in the container: ask the engine (sticky, so the worker goes)
            oom = answer["exit_code"] == 137 and not answer["timed_out"] and self._engine_saw_oom()
        self.usable = bool(answer["reusable"]) and not oom and self.runs < MAX_RUNS
        return capped_result(
            out,
            err,
            exit_code=answer["exit_code"],
            timed_out=answer["timed_out"],
            oom_killed=oom,
            duration_s=answer["duration_s"],
        )

    def close(self) -> None:
        """Close the stream and remove the container (idempotent)."""
        if self.container_id is None:
            return
        self.usable = False
        try:
            self._raw.close()
            self._sock.close()
        finally:
            container_id, self.container_id = self.container_id, None
            remove(self.client, container_id)

    # -- the stream -------------------------------------------------------------------

    def _read_until_answer(self, out: CappedOutput, err: CappedOutput, deadline: float) -> dict[str, Any] | None:
        while True:
            answer = self._take_frames(out, err)
            if answer is not None:
                return answer
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                kill(self.client, self.container_id)
                return None
            self._raw.settimeout(remaining)
            try:
                chunk = self._raw.recv(256 * 1024)
            except TimeoutError:
                continue
            except OSError as exc:
                raise WorkerLost(f"the sandbox container's stream broke: {exc}") from exc
            if not chunk:
                said = self._stderr.decode(errors="replace").strip()
                raise WorkerLost("the sandbox container ended" + (f": {said[-500:]}" if said else ""))
            self._docker += chunk

    def _take_frames(self, out: CappedOutput, err: CappedOutput) -> dict[str, Any] | None:
        """Split what has arrived; the supervisor's answer once it is complete."""
        for stream, data in take_frames(self._docker, DOCKER_FRAME):
            (self._stderr if stream == 2 else self._stdout).extend(data)
        for kind, data in take_frames(self._stdout, _FRAME):
            if kind == b"x":
                return json.loads(data)
            (err if kind == b"e" else out).add(data)
        return None

    def _engine_saw_oom(self) -> bool:
        return bool(self.client.api.inspect_container(self.container_id)["State"].get("OOMKilled"))
