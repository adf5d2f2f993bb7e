"""The components a Runtime keeps: one per name *and* settings.

A Runtime reuses its splitters and verifiers across solves (a verifier may hold a
loaded reward model and a score cache), but a solve may change their settings
(``rt.solve(q, options={"prm": {"format": "qwen"}})``). So a kept component is found by
its kind, its name, its parsed options and the Config fields a solve cannot change
without another component (all but :data:`reason.config.SOLVE_FIELDS`: the seed, the
temperature, ``n`` ... reach a kept component with each request). Two solves that differ
in their seed share one verifier; two with other verifier options get two.

The backend is the exception: a Runtime has one model and one engine, so its backend
settings (:data:`BACKEND_FIELDS` and the backend's options) are fixed when the Runtime is
built, and a solve that changes them is refused (:func:`check_backend`) rather than
silently served by the old model.

At most :data:`VARIANTS_KEPT` components are kept per name (``reason serve`` lets each
request set options): the least recently used one is let go (not closed: a search may
still hold it; what it holds is freed with it).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import attrs

from .config import SOLVE_FIELDS, Config
from .errors import UsageError
from .log import get_logger
from .options import Options
from .registry import PluginRegistry

BACKEND_FIELDS: tuple[str, ...] = ("backend", "model", "device", "dtype")
"""The Config fields that pick the model: fixed for a Runtime's life."""

VARIANTS_KEPT = 16
"""Components kept per (kind, name), one per distinct settings."""

Key = tuple[Any, ...]

_COMPONENT_FIELDS = tuple(f.name for f in attrs.fields(Config) if f.name not in (*SOLVE_FIELDS, "options"))


def check_backend(options: type[Options], built: Config, wanted: Config, name: str) -> None:
    """Refuse a config whose backend settings differ from those the backend was built with."""
    changed = [field for field in BACKEND_FIELDS if getattr(built, field) != getattr(wanted, field)]
    before, after = options.from_run(built.options, name), options.from_run(wanted.options, name)
    changed += [f"options.{name}.{o.name}" for o in options.declared if getattr(before, o.name) != getattr(after, o.name)]
    if changed:
        shown = [f"-o {field.removeprefix('options.')}" if field.startswith("options.") else field for field in changed]
        raise UsageError(
            f"a Runtime's backend is fixed when it is built; this run changes {', '.join(shown)}. "
            "Build another Runtime for another model or backend settings",
            param=changed[0],
        )


class ComponentCache:
    """Builds components through the registry and keeps one per (kind, name, the config
    that matters to it); :meth:`close` releases them all."""

    def __init__(self, registry: PluginRegistry, adopt: Callable[[Any, str], None]) -> None:
        """``adopt(component, spec)`` is called once on each new component (the runtime
        wires its event emitter there)."""
        self.registry = registry
        self._adopt = adopt
        self._built: OrderedDict[Key, Any] = OrderedDict()  # least recently used first
        self._lock = threading.RLock()
        self._warned: set[tuple[str, str]] = set()

    def get(self, kind: str, spec: str, config: Config) -> Any:
        options = self.registry.options_for(kind, spec, config)
        key = (kind, spec, options, tuple(getattr(config, name) for name in _COMPONENT_FIELDS))
        with self._lock:
            component = self._built.get(key)
            if component is not None:
                self._built.move_to_end(key)
                return component
            component = self.registry.build(kind, spec, config, options)
            self._adopt(component, spec)
            self._built[key] = component
            variants = [k for k in self._built if k[:2] == (kind, spec)]
            if len(variants) > 1:
                get_logger().debug("another component for another config", kind=kind, spec=spec)
            if len(variants) > VARIANTS_KEPT:
                del self._built[variants[0]]
                if (kind, spec) not in self._warned:
                    self._warned.add((kind, spec))
                    get_logger().warning(
                        "component rebuilt for many settings; the oldest are let go",
                        kind=kind,
                        spec=spec,
                        kept=VARIANTS_KEPT,
                    )
            return component

    def close(self) -> None:
        """Close every kept component (a failure is logged: it must not mask the run's outcome)."""
        with self._lock:
            components = list(self._built.values())
            self._built.clear()
        for component in components:
            try:
                component.close()
            except Exception as exc:  # closing must not mask the real outcome
                get_logger().warning("close failed", component=type(component).__name__, error=str(exc))
