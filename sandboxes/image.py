"""Build the sandbox image locally, with no registry.

``debootstrap --variant=minbase`` makes a Debian root filesystem with Python 3 in it;
documentation, locales and apt's caches are dropped; the tree is tarred and handed to
``docker import``. The tag is a hash of the recipe, so a changed recipe gets a new image
and an unchanged one is never rebuilt. Building needs root (debootstrap) and the
Debian mirror; running needs neither.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reason.errors import UsageError, VerifierError

from .engine import connect

IMAGE_REPOSITORY = "reason-sandbox"

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3",)
"""``python3`` (not ``python3-minimal``): model-written code imports json, fractions,
decimal, statistics..., which only the full standard library has."""
TRIM = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/log",
)
"""Paths emptied before import: nothing in the sandbox reads them."""
SANDBOX_UID = 65534
WORKDIR = "/sandbox"
CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    "ENV PYTHONDONTWRITEBYTECODE=1",
    f"ENV HOME={WORKDIR}",
    f"USER {SANDBOX_UID}:{SANDBOX_UID}",
    f"WORKDIR {WORKDIR}",
    'CMD ["python3"]',
)
RECIPE_VERSION = 1
"""Bump when the build changes in a way the fields above do not show."""


def recipe() -> dict[str, Any]:
    """Everything that determines the image's content."""
    return {
        "version": RECIPE_VERSION,
        "suite": SUITE,
        "variant": "minbase",
        "packages": list(PACKAGES),
        "trim": list(TRIM),
        "changes": list(CHANGES),
    }


def image_tag() -> str:
    """``reason-sandbox:py3-<hash of the recipe>``."""
    digest = hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:12]
    return f"{IMAGE_REPOSITORY}:py3-{digest}"


def image_exists(client: Any, tag: str | None = None) -> bool:
    import docker.errors

    try:
        client.images.get(tag or image_tag())
    except docker.errors.ImageNotFound:
        return False
    return True


def require_image(client: Any, tag: str | None = None) -> str:
    """The tag, after checking the image is there (``containers.run`` would try to pull it,
    and there is no registry)."""
    tag = tag or image_tag()
    if not image_exists(client, tag):
        raise VerifierError(f"the sandbox image {tag} is missing: build it with 'reason sandbox build'")
    return tag


def build(
    client: Any | None = None,
    *,
    force: bool = False,
    mirror: str | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> tuple[str, bool]:
    """Build the image unless it exists. Returns ``(tag, built)``."""
    client = client or connect()
    tag = image_tag()
    if image_exists(client, tag) and not force:
        return tag, False
    debootstrap = _debootstrap_binary(log)
    mirror = mirror or os.environ.get("REASON_SANDBOX_MIRROR") or DEFAULT_MIRROR
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="reason-sandbox-build-") as tmp:
        root = Path(tmp) / "root"
        log(f"debootstrap {SUITE} ({', '.join(PACKAGES)}) from {mirror}")
        _run(
            [debootstrap, "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root), mirror],
            what="debootstrap",
        )
        for rel in TRIM:
            path = root / rel
            if path.is_dir():
                shutil.rmtree(path)
                path.mkdir(mode=0o755)
        (root / WORKDIR.lstrip("/")).mkdir(mode=0o755, exist_ok=True)
        _check_python(root)
        archive = Path(tmp) / "rootfs.tar"
        log("packing the root filesystem")
        _run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(archive), "."], what="tar")
        log(f"docker import as {tag}")
        client.api.import_image_from_file(
            str(archive),
            repository=tag.partition(":")[0],
            tag=tag.partition(":")[2],
            changes=list(CHANGES) + [f"LABEL {k}={v}" for k, v in _image_labels().items()],
        )
    if not image_exists(client, tag):
        raise VerifierError(f"docker import finished but {tag} is not listed; see the engine's log")
    log(f"built {tag} in {time.monotonic() - start:.0f}s")
    return tag, True


def _image_labels() -> dict[str, str]:
    return {"reason-runtime.recipe": image_tag().rpartition("-")[2]}


def _debootstrap_binary(log: Callable[[str], None]) -> str:
    found = shutil.which("debootstrap") or next(
        (p for p in ("/usr/sbin/debootstrap", "/sbin/debootstrap") if os.path.exists(p)), None
    )
    if found:
        if os.geteuid() != 0:
            raise UsageError("building the sandbox image runs debootstrap, which needs root: run 'sudo reason sandbox build'")
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise UsageError("building the sandbox image needs debootstrap: install it (apt-get install debootstrap) as root")
    log("installing debootstrap (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-qq"], what="apt-get update", env=env)
    _run(["apt-get", "install", "-y", "-qq", "debootstrap"], what="apt-get install debootstrap", env=env)
    found = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not os.path.exists(found):
        raise VerifierError("apt-get installed debootstrap but it cannot be found on PATH or in /usr/sbin")
    return found


def _check_python(root: Path) -> None:
    if not (root / "usr/bin/python3").exists():
        raise VerifierError(f"debootstrap finished but {root}/usr/bin/python3 is missing")


def _run(cmd: list[str], *, what: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.decode(errors="replace").splitlines()[-15:])
        raise VerifierError(f"{what} failed (exit {proc.returncode}):\n{tail}")
