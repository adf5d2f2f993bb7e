"""The Docker code sandbox: run untrusted Python in a locked-down, throw-away container.

- :mod:`~reason.sandboxes.image` builds the image locally (no registry: debootstrap +
  ``docker import``), tagged by the hash of its recipe.
- :mod:`~reason.sandboxes.runner` runs one program in a hardened container and returns a
  :class:`RunResult`; :class:`Sandbox` is the object callers use.
- :mod:`~reason.sandboxes.pool` keeps fresh containers started ahead of need.
- :mod:`~reason.sandboxes.sweep` removes containers left behind by crashed runs.

Importing this package imports nothing: the names below load on first access (so the
``reason sandbox`` commands cost ``reason --help`` nothing), and the docker SDK only when
a sandbox is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .image import IMAGE_REPOSITORY, image_tag
    from .limits import Limits
    from .result import RunResult
    from .runner import Sandbox

_EXPORTS = {
    "IMAGE_REPOSITORY": "image",
    "Limits": "limits",
    "RunResult": "result",
    "Sandbox": "runner",
    "image_tag": "image",
}

__all__ = ["IMAGE_REPOSITORY", "Limits", "RunResult", "Sandbox", "image_tag"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
