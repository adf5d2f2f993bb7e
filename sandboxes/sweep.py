"""Remove sandbox containers that no live process owns.

Every container carries the labels of :mod:`reason.sandboxes.engine`. A runner removes
its containers in ``finally``; a runner that was SIGKILLed, or a machine that lost power
mid-run, cannot. The sweep runs when a sandbox starts (and from ``reason sandbox
clean``) and removes containers whose owner process is gone. Containers owned by a live
process, or by a process on another host, are left alone; ``clean(all_=True)`` removes
every one regardless.
"""

from __future__ import annotations

from typing import Any

from reason.log import get_logger

from .container import remove
from .engine import LABEL, LABEL_HOST, LABEL_OWNER, host_id, owner_alive


def labelled(client: Any) -> list[dict[str, Any]]:
    """Every container (running or not) that carries the sandbox label."""
    return client.api.containers(all=True, filters={"label": LABEL})


def orphans(client: Any) -> list[str]:
    """Ids of labelled containers on this host whose owner process has died."""
    found = []
    here = host_id()
    for info in labelled(client):
        container_labels = info.get("Labels") or {}
        if container_labels.get(LABEL_HOST) != here:
            continue
        owner = container_labels.get(LABEL_OWNER, "")
        if not owner_alive(owner):
            found.append(info["Id"])
    return found


def sweep(client: Any) -> int:
    """Remove the containers of dead owners; returns how many were removed."""
    removed = 0
    for container_id in orphans(client):
        try:
            remove(client, container_id)
            removed += 1
        except Exception as exc:  # one stuck container must not stop the rest
            get_logger().warning("sandbox sweep could not remove a container", container=container_id[:12], error=str(exc))
    if removed:
        get_logger().info("sandbox sweep removed leftovers of dead runs", containers=removed)
    return removed


def clean(client: Any) -> int:
    """Remove every labelled container, whoever owns it; returns how many."""
    removed = 0
    for info in labelled(client):
        remove(client, info["Id"])
        removed += 1
    return removed
