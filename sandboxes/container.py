"""One hardened container: how it is created, fed a program, and read.

Each container runs exactly one program and is then removed: nothing (files, processes,
environment) can carry over to the next run. The container starts a tiny shell that
waits on stdin for a header line ``<code bytes> <backstop seconds>``, writes the code to
``/sandbox/main.py`` (a tmpfs) and execs ``python3 main.py`` under ``timeout -s KILL``;
the rest of stdin is the program's own stdin. Because the program arrives on stdin, a
container can be created and started long before the program is known (the warm pool),
and no file is ever copied in (``put_archive`` is refused on a read-only root).
"""

from __future__ import annotations

import math
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

from .engine import labels
from .image import SANDBOX_UID, WORKDIR
from .limits import Limits
from .result import RunResult

BOOTSTRAP = 'IFS=" " read -r n t || exit 125; head -c "$n" > main.py || exit 125; exec timeout -s KILL "$t" python3 main.py'
"""Run by ``sh`` (dash) as the container's command. dash's ``read`` takes one byte at a
time from a pipe and ``head -c`` reads no further than asked, so the program's stdin is
left intact behind the code."""

BACKSTOP_GRACE_S = 5
"""The in-container ``timeout`` fires this long after the host's own deadline: it only
matters when the process that should kill the container has died."""

EXIT_BOOTSTRAP_FAILED = 125


def container_spec(client: Any, image: str, limits: Limits) -> dict[str, Any]:
    """Keyword arguments for ``client.api.create_container``: the hardening lives here."""
    from docker.types import LogConfig, Ulimit

    file_bytes = limits.file_mb * 1024 * 1024
    tmp_mb = max(1, limits.workdir_mb // 4)
    host_config = client.api.create_host_config(
        network_mode="none",
        read_only=True,
        tmpfs={
            WORKDIR: f"rw,noexec,nosuid,nodev,size={limits.workdir_mb}m,uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0700",
            "/tmp": f"rw,noexec,nosuid,nodev,size={tmp_mb}m,mode=1777",
        },
        shm_size=1024 * 1024,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        pids_limit=limits.pids,
        mem_limit=f"{limits.memory_mb}m",
        memswap_limit=f"{limits.memory_mb}m",
        nano_cpus=int(limits.cpus * 1e9),
        ulimits=[
            Ulimit(name="fsize", soft=file_bytes, hard=file_bytes),
            Ulimit(name="nofile", soft=limits.open_files, hard=limits.open_files),
            Ulimit(name="core", soft=0, hard=0),
        ],
        # With no log driver, 100 MB of output never lands on the host's disk; attach
        # still streams it to us.
        log_config=LogConfig(type=LogConfig.types.NONE),
        ipc_mode="private",
    )
    return dict(
        image=image,
        command=["sh", "-c", BOOTSTRAP],
        user=f"{SANDBOX_UID}:{SANDBOX_UID}",
        working_dir=WORKDIR,
        hostname="sandbox",
        environment={
            "HOME": WORKDIR,
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        },
        labels=labels(image),
        stdin_open=True,
        detach=False,  # with stdin_open: StdinOnce, so our half-close is the program's EOF
        network_disabled=True,
        host_config=host_config,
    )


def create_started(client: Any, image: str, limits: Limits) -> str:
    """Create and start a container that waits for its program; returns its id. The
    container is removed again if starting it fails."""
    container_id = client.api.create_container(**container_spec(client, image, limits))["Id"]
    try:
        client.api.start(container_id)
    except BaseException:
        remove(client, container_id)
        raise
    return container_id


def remove(client: Any, container_id: str) -> None:
    """Force-remove, ignoring a container that is already gone."""
    import docker.errors

    try:
        client.api.remove_container(container_id, force=True, v=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 409 or "already in progress" not in str(exc):
            raise


class CappedOutput:
    """Keeps the first bytes and the last bytes of a stream up to ``cap`` in all."""

    def __init__(self, cap: int) -> None:
        self.tail_cap = cap // 4
        self.head_cap = cap - self.tail_cap
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > self.tail_cap:
                del self.tail[: len(self.tail) - self.tail_cap]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.head) + len(self.tail)

    def text(self) -> str:
        if not self.truncated:
            return (bytes(self.head) + bytes(self.tail)).decode(errors="replace")
        dropped = self.total - len(self.head) - len(self.tail)
        marker = f"\n... [{dropped} bytes dropped] ...\n".encode()
        return (bytes(self.head) + marker + bytes(self.tail)).decode(errors="replace")


def execute(client: Any, container_id: str, code: str, stdin: bytes, limits: Limits) -> RunResult:
    """Hand the program to a started, waiting container and collect its result.

    The wall clock starts when the program is sent; at the deadline the container is
    killed. The container is NOT removed here (the caller does it, in ``finally``).
    """
    payload = code.encode()
    backstop = math.ceil(limits.timeout_s) + BACKSTOP_GRACE_S
    message = f"{len(payload)} {backstop}\n".encode() + payload + stdin
    sock = client.api.attach_socket(container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
    raw: socket.socket = getattr(sock, "_sock", sock)
    out, err = CappedOutput(limits.output_bytes), CappedOutput(limits.output_bytes)
    timed_out = False
    start = time.monotonic()
    try:
        writer = send_input(raw, message)
        deadline = start + limits.timeout_s
        timed_out = not _read_frames(raw, out, err, deadline)
        if timed_out:
            kill(client, container_id)
            # The stream ends once the container is dead; drain what is still in flight.
            _read_frames(raw, out, err, time.monotonic() + 10)
        if writer is not None:
            writer.join(timeout=5)
    finally:
        try:
            raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raw.close()
        sock.close()
    status = _wait(client, container_id, timeout=max(0.0, start + limits.timeout_s - time.monotonic()) + 10)
    if status is None:  # the stream ended but the program runs on: enforce the deadline here
        timed_out = True
        kill(client, container_id)
        status = _wait(client, container_id, timeout=30) or {}
    duration = time.monotonic() - start
    exit_code = status.get("StatusCode")
    oom = False
    if exit_code is not None and exit_code >= 128 and not timed_out:
        oom = bool(client.api.inspect_container(container_id)["State"].get("OOMKilled"))
    return capped_result(out, err, exit_code=exit_code, timed_out=timed_out, oom_killed=oom, duration_s=duration)


def capped_result(out: CappedOutput, err: CappedOutput, **how: Any) -> RunResult:
    """A run's result: its capped stdout and stderr, and ``how`` it ended (exit code,
    timed out, OOM, duration)."""
    return RunResult(
        stdout=out.text(),
        stderr=err.text(),
        truncated=out.truncated or err.truncated,
        stdout_bytes=out.total,
        stderr_bytes=err.total,
        **how,
    )


def send_input(raw: socket.socket, message: bytes, *, half_close: bool = True) -> threading.Thread | None:
    """Write the program (and its stdin), then half-close (the program sees EOF) unless
    the stream carries more runs. Large payloads go from a thread so a program that
    prints before reading cannot deadlock us."""

    def write() -> None:
        try:
            raw.sendall(message)
            if half_close:
                raw.shutdown(socket.SHUT_WR)
        except OSError:  # the container died (or was killed) before reading it all
            pass

    if len(message) <= 32 * 1024:
        write()
        return None
    thread = threading.Thread(target=write, name="sandbox-stdin", daemon=True)
    thread.start()
    return thread


DOCKER_FRAME = struct.Struct(">BxxxL")
"""The header of each frame of an attach stream: stream id (1 stdout, 2 stderr), size."""


def take_frames(buffer: bytearray, header: struct.Struct) -> Iterator[tuple[Any, bytes]]:
    """The complete ``(kind, payload)`` frames at the front of ``buffer`` (each ``header``
    is a kind and a payload size), removed as they are taken; a partial frame stays."""
    while len(buffer) >= header.size:
        kind, size = header.unpack_from(buffer)
        end = header.size + size
        if len(buffer) < end:
            return
        data = bytes(buffer[header.size : end])
        del buffer[:end]
        yield kind, data


def _read_frames(raw: socket.socket, out: CappedOutput, err: CappedOutput, deadline: float) -> bool:
    """Demultiplex the attach stream (8-byte headers: stream id, size) into ``out`` and
    ``err`` until it ends (True) or ``deadline`` passes (False)."""
    buffer = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        raw.settimeout(remaining)
        try:
            chunk = raw.recv(256 * 1024)
        except TimeoutError:
            return False
        except OSError:
            return True
        if not chunk:
            return True
        buffer += chunk
        for stream, data in take_frames(buffer, DOCKER_FRAME):
            (err if stream == 2 else out).add(data)


def _wait(client: Any, container_id: str, timeout: float) -> dict[str, Any] | None:
    """The container's exit status, or ``None`` if it is still running after ``timeout``."""
    import requests.exceptions

    try:
        return client.api.wait(container_id, timeout=timeout)
    except requests.exceptions.ConnectionError as exc:  # urllib3 wraps the read timeout
        if "timed out" not in str(exc).lower():
            raise
        return None
    except requests.exceptions.Timeout:
        return None


def kill(client: Any, container_id: str) -> None:
    import docker.errors

    try:
        client.api.kill(container_id)
    except docker.errors.APIError:  # already exited, or already gone
        pass
