"""Reaching the Docker engine, and the labels every sandbox container carries.

The docker SDK is imported here, inside :func:`connect`, so importing the sandbox package
costs nothing until a container is really needed.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from typing import Any

from reason.errors import VerifierError

LABEL = "reason-runtime.sandbox"
"""Present on every container the project creates (value: the image tag)."""
LABEL_OWNER = "reason-runtime.sandbox.owner"
"""``pid:start-time`` of the process that created the container (see :func:`owner_id`)."""
LABEL_HOST = "reason-runtime.sandbox.host"
"""Which machine (boot) the owner runs on; the sweep only judges owners on its own host."""

ENGINE_FIX = (
    "start one with 'bash scripts/ensure-docker.sh' (from the repository) or "
    "'apt-get install -y docker.io && dockerd &', then check with 'reason sandbox doctor'"
)


class EngineUnavailable(VerifierError):
    """No Docker engine answers."""


def connect(pool_size: int = 32, timeout: float = 60.0) -> Any:
    """A ``docker.DockerClient`` from the environment (``DOCKER_HOST`` or the local socket)
    whose engine has answered a ping. ``pool_size`` bounds concurrent API connections."""
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - docker is a hard dependency
        raise EngineUnavailable(f"the docker SDK is not installed ({exc}): pip install docker") from exc
    try:
        client = docker.from_env(max_pool_size=pool_size, timeout=timeout)
        client.ping()
    except Exception as exc:
        raise EngineUnavailable(f"no Docker engine answers ({_short(exc)}): {ENGINE_FIX}") from exc
    return client


def engine_available() -> bool:
    """Whether an engine answers right now (never raises)."""
    try:
        connect(pool_size=1, timeout=5).close()
    except EngineUnavailable:
        return False
    return True


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:200] if text else type(exc).__name__


def process_start_time(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc/PID/stat`` field 22),
    which tells a live owner from a later process that reused its pid. ``None`` when the
    process does not exist or /proc cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def owner_id(pid: int | None = None) -> str:
    """``pid:start-time`` naming the process that owns a container."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{process_start_time(pid) or '?'}"


def owner_alive(owner: str) -> bool:
    """Whether the process named by an :func:`owner_id` still runs (on this host)."""
    pid_text, _, start = owner.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    current = process_start_time(pid)
    if current is not None:
        return start in ("?", current)
    if os.path.isdir("/proc"):
        return False
    try:  # no /proc (macOS): signal 0 tells whether the pid exists
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@lru_cache(maxsize=1)
def host_id() -> str:
    """This machine and boot: a pid means nothing on another host or after a reboot."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "noboot"
    return f"{socket.gethostname()}/{boot}"


def labels(image: str) -> dict[str, str]:
    """The labels of a container created by this process."""
    return {LABEL: image, LABEL_OWNER: owner_id(), LABEL_HOST: host_id()}
