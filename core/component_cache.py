"""The components a Runtime keeps: one per name *and* effective config.

A Runtime reuses its splitters and verifiers across solves (a verifier may hold a
loaded reward model and a score cache), but a solve may change their settings
(``rt.solve(q, options={"prm_format": "qwen"})``). So a kept component is found by its
kind, its name and the part of the config that matters to it: the options it declares
(all options when it declares none) and the Config fields it reads
(:attr:`~reason.components.Component.config_fields`; all fields when it does not
say). Two solves that differ there get two components; two that differ elsewhere
(``n``, ``temperature``) share one.

The backend is the exception: a Runtime has one model and one engine, so its backend
settings (:data:`BACKEND_FIELDS` and the backend's declared options) are fixed when the
Runtime is built, and a solve that changes them is refused (:func:`check_backend`)
rather than silently served by the old model.

A long-lived Runtime (``reason serve``, where each request may set its own seed or
temperature) must not grow without bound when a component reads every field, so at most
:data:`VARIANTS_KEPT` are kept per name: the least recently used one is let go (not
closed: a search may still hold it; what it holds is freed with it).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from .config import Config
from .errors import UsageError
from .log import get_logger
from .options import Declarations, declared
from .registry import PluginRegistry

BACKEND_FIELDS: tuple[str, ...] = ("backend", "model", "device", "dtype")
"""The Config fields that pick the model: fixed for a Runtime's life."""

VARIANTS_KEPT = 16
"""Components kept per (kind, name), one per config that matters to them."""

Key = tuple[Any, ...]


def freeze(value: Any) -> Any:
    """A hashable stand-in for a config value (TOML tables and arrays included)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple | set):
        return tuple(freeze(v) for v in value)
    return value


def options_key(options: Declarations | None, config: Config) -> Key:
    """The options of ``config`` that matter to a component declaring ``options``."""
    given = config.options if options is None else {o.name: config.options[o.name] for o in options if o.name in config.options}
    return freeze(given)


def config_key(factory: Any, config: Config) -> Key:
    """What of ``config`` matters to the components ``factory`` builds."""
    fields = getattr(factory, "config_fields", None)
    names = sorted(Config.field_names() - {"options"}) if fields is None else sorted(fields)
    return (tuple((name, freeze(getattr(config, name))) for name in names), options_key(declared(factory), config))


def backend_key(options: Declarations | None, config: Config) -> Key:
    """The backend settings of ``config`` (undeclared backend options cannot be told
    apart from other components', so they are not part of it)."""
    return (tuple(getattr(config, name) for name in BACKEND_FIELDS), options_key(options or (), config))


def check_backend(options: Declarations | None, built: Config, wanted: Config) -> None:
    """Refuse a config whose backend settings differ from those the backend was built with."""
    if backend_key(options, built) == backend_key(options, wanted):
        return
    changed = [name for name in BACKEND_FIELDS if getattr(built, name) != getattr(wanted, name)]
    changed += [f"-o {o.name}" for o in options or () if built.options.get(o.name) != wanted.options.get(o.name)]
    raise UsageError(
        f"a Runtime's backend is fixed when it is built; this run changes {', '.join(changed)}. "
        "Build another Runtime for another model or backend settings"
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
        registration, _ = self.registry.lookup(kind, spec)
        key = (kind, spec, config_key(registration.factory, config))
        with self._lock:
            component = self._built.get(key)
            if component is not None:
                self._built.move_to_end(key)
                return component
            component = self.registry.create(kind, spec, config)
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
                        "component rebuilt for many configs; the oldest are let go. If it reads few "
                        "Config fields, say which in its config_fields",
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
