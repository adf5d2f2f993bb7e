"""The plugin manager: built-ins first, then the ``reason`` entry points, one at a time.

Each plugin is registered with pluggy's plugin manager, and its registration hooks are
called through it (one plugin at a time, ``pm.subset_hook_caller``), so that one
plugin's failure stays its own. A plugin that fails to import, implements a hook that
does not exist (a misspelling), defines a ``reason_*`` function without ``@hookimpl``, or
whose registration hook raises is skipped with one warning naming it and the error, and
listed as broken by ``reason plugins``.
``REASON_LOAD_PLUGINS=a,b`` loads only those entry-point plugins (``''`` = none), so a
broken plugin can always be uninstalled with the CLI.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import threading
import warnings
from collections.abc import Callable
from typing import Any

import pluggy
from attrs import define, field

from . import hookspecs
from .errors import ComponentNotFound, UsageError
from .options import Options, declared

hookimpl = pluggy.HookimplMarker("reason")

ENTRY_POINT_GROUP = "reason"

BUILTIN_PLUGINS: tuple[str, ...] = (
    "reason.plugins.backends",
    "reason.plugins.splitters",
    "reason.plugins.verifiers",
    "reason.plugins.search",
    "reason.plugins.reflection",
    "reason.plugins.datasets",
    "reason.plugins.commands",
    "reason.plugins.viewer",
    "reason.plugins.serve",
)
"""Modules of the built-in plugins. Each is registered exactly like a third-party plugin."""

KINDS: dict[str, str] = {
    "backend": "reason_register_backends",
    "splitter": "reason_register_splitters",
    "verifier": "reason_register_verifiers",
    "search": "reason_register_searches",
    "reflection": "reason_register_reflections",
    "dataset": "reason_register_datasets",
}
"""Component kind -> the registration hook that fills it."""


class PluginLoadWarning(UserWarning):
    """A plugin could not be loaded and was skipped."""


CONFIG_FIELD = {"reflection": "reflect"}
"""The Config field that names a component of each kind, where it is not the kind."""


@define
class PluginInfo:
    name: str
    version: str | None = None
    builtin: bool = False
    hooks: list[str] = field(factory=list)
    registers: dict[str, list[str]] = field(factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "builtin": self.builtin,
            "hooks": self.hooks,
            "registers": self.registers,
            "error": self.error,
        }


@define
class Registration:
    name: str
    factory: Callable[..., Any]
    plugin: str


@define
class PluginRegistry:
    """The loaded plugins and every component they registered, by kind and name."""

    pm: pluggy.PluginManager
    plugins: dict[str, PluginInfo] = field(factory=dict)
    components: dict[str, dict[str, Registration]] = field(factory=lambda: {kind: {} for kind in KINDS})

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def lookup(self, kind: str, spec: str) -> tuple[Registration, str | None]:
        """Find the factory for ``name`` or ``name:arg``; a clear error lists what exists."""
        name, _, arg = spec.partition(":")
        registered = self.components[kind]
        if name not in registered:
            available = ", ".join(self.names(kind)) or "none"
            raise ComponentNotFound(f"unknown {kind} {name!r}; available: {available}", param=CONFIG_FIELD.get(kind, kind))
        return registered[name], (arg or None)

    def create(self, kind: str, spec: str, config: Any) -> Any:
        """Build component ``spec`` for ``config``: ``factory(config, arg, options=...)``,
        the options parsed for its registered name (a factory without an :class:`Options`
        class, e.g. a function, is called with ``(config, arg)``)."""
        return self.build(kind, spec, config, self.options_for(kind, spec, config))

    def build(self, kind: str, spec: str, config: Any, options: Options | None) -> Any:
        """:meth:`create` with the options already parsed (:meth:`options_for`)."""
        registration, arg = self.lookup(kind, spec)
        try:
            if options is None:
                return registration.factory(config, arg)
            return registration.factory(config, arg, options=options)
        except UsageError:
            raise
        except (ValueError, TypeError) as exc:
            raise UsageError(
                f"{kind} {spec!r} (from plugin {registration.plugin}): {exc}", param=CONFIG_FIELD.get(kind, kind)
            ) from exc

    def options_for(self, kind: str, spec: str, config: Any) -> Options | None:
        """The options component ``spec`` gets in a run of ``config`` (see
        :meth:`Options.from_run <reason.Options.from_run>`); None when its factory declares none."""
        registration, _ = self.lookup(kind, spec)
        cls = declared(registration.factory)
        return None if cls is None else cls.from_run(config.options, registration.name)

    def declared_options(self, kind: str, name: str) -> type[Options] | None:
        """The :class:`Options` class of registered component ``name`` (None: a plain
        function factory, or its module cannot be imported: that error belongs to a run
        that uses it)."""
        try:
            return declared(self.components[kind][name].factory)
        except Exception:  # noqa: BLE001 -- a broken lazy target of someone else's plugin
            return None

    def broken(self) -> list[PluginInfo]:
        return [info for info in self.plugins.values() if info.error]

    def add(self, kind: str, name: str, factory: Callable[..., Any], plugin: str = "tests") -> None:
        """Register one component directly, without a plugin module (tests, scripts).
        A name that is taken is an error, as for plugins."""
        if kind not in self.components:
            raise UsageError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
        existing = self.components[kind].get(name)
        if existing is not None:
            raise UsageError(f"{kind} {name!r} is registered twice: by {existing.plugin} and by {plugin}")
        self.components[kind][name] = Registration(name, factory, plugin)

    def remove(self, kind: str, name: str) -> None:
        """Undo :meth:`add` (a missing name is no error)."""
        self.components[kind].pop(name, None)


def _check_hooks(pm: pluggy.PluginManager, name: str, plugin: Any) -> list[str]:
    """The hooks ``plugin`` implements; a hook without a spec (a misspelled name) or a
    ``reason_*`` function not marked ``@hookimpl`` is an error naming both."""
    implemented = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
    known = ", ".join(sorted(n for n in dir(pm.hook) if n.startswith("reason_")))
    for hook in implemented:
        if not getattr(pm.hook, hook).has_spec():
            raise UsageError(f"plugin {name!r} implements {hook!r}, which is no reason hook; the hooks are: {known}")
    for attr in dir(plugin):
        if attr.startswith("reason_") and callable(getattr(plugin, attr)) and attr not in implemented:
            raise UsageError(f"plugin {name!r} defines {attr}() without @reason.hookimpl, so it would never be called")
    return implemented


def _collect(registry: PluginRegistry, name: str, plugin: Any) -> None:
    """Call one plugin's registration hooks (through the plugin manager, this plugin's
    implementations only), recording what it registers."""
    info = registry.plugins[name]
    staged: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}
    others = [p for p in registry.pm.get_plugins() if p is not plugin]
    for kind, hook in KINDS.items():
        if hook not in info.hooks:
            continue

        def register(component: str, factory: Callable[..., Any], _kind: str = kind) -> None:
            existing = registry.components[_kind].get(component) or staged[_kind].get(component)
            if existing is not None:
                raise UsageError(f"{_kind} {component!r} is registered twice: by {existing.plugin} and by {name}")
            staged[_kind][component] = Registration(component, factory, name)

        registry.pm.subset_hook_caller(hook, remove_plugins=others)(register=register)
    for kind, regs in staged.items():
        registry.components[kind].update(regs)
        if regs:
            info.registers[kind] = sorted(regs)


def _load(registry: PluginRegistry, name: str, load: Callable[[], Any], version: str | None, builtin: bool) -> None:
    info = PluginInfo(name=name, version=version, builtin=builtin)
    registry.plugins[name] = info
    plugin = None
    try:
        plugin = load()
        registry.pm.register(plugin, name=name)
        info.hooks = _check_hooks(registry.pm, name, plugin)
        _collect(registry, name, plugin)
    except Exception as exc:  # a broken plugin must never take the CLI down with it
        if plugin is not None and registry.pm.is_registered(plugin):
            registry.pm.unregister(plugin)
        info.error = f"{type(exc).__name__}: {exc}"
        info.registers = {}
        warnings.warn(f"reason: skipped plugin {name!r}: {info.error}", PluginLoadWarning, stacklevel=2)


def _allowed_entry_points() -> set[str] | None:
    raw = os.environ.get("REASON_LOAD_PLUGINS")
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def load_plugins() -> PluginRegistry:
    """Build a fresh registry: built-ins, then entry points (filtered by REASON_LOAD_PLUGINS)."""
    pm = pluggy.PluginManager("reason")
    pm.add_hookspecs(hookspecs)
    registry = PluginRegistry(pm=pm)
    from . import __version__

    for module in BUILTIN_PLUGINS:
        _load(registry, module, functools.partial(importlib.import_module, module), __version__, builtin=True)
    allowed = _allowed_entry_points()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and ep.name not in allowed:
            continue
        version = ep.dist.version if ep.dist is not None else None
        _load(registry, ep.name, ep.load, version, builtin=False)
    return registry


_registry: PluginRegistry | None = None
_lock = threading.Lock()


def get_registry() -> PluginRegistry:
    """The process-wide registry, loaded on first use."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = load_plugins()
        return _registry


def reset_registry() -> None:
    """Forget the loaded plugins (tests; after installing a plugin at run time)."""
    global _registry
    with _lock:
        _registry = None


class lazy:  # noqa: N801 -- used like a function: register("prm", lazy("pkg.mod:Cls"))
    """A factory that imports ``"module:attr"`` only when a component is built, so
    registering a torch- or docker-backed component costs nothing at start-up. Its class
    attributes (``Options``, a policy's ``reads_n`` ...) are the target's: asking for one
    imports the module (which must therefore import its heavy libraries inside functions)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.__qualname__ = self.__name__ = f"lazy({target})"

    def resolve(self) -> Any:
        module_name, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module_name), attr)

    def __call__(self, config: Any, arg: str | None = None, **kwargs: Any) -> Any:
        return self.resolve()(config, arg, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # protocols (copy, pickle, inspect) must not import the target
            raise AttributeError(name)
        return getattr(self.resolve(), name)
