"""Which ``-o`` options a run takes: those its components declare.

The components of a run are its backend, search policy (and the sub-policies it
declares in :meth:`~reason.components.SearchPolicy.sub_configs`), splitter, verifier
and reflection triggers. A key in ``config.options`` must be declared by one of them,
and its value must fit the declaration; otherwise the run stops before it starts with
one message that names the key: what it expects, which component takes it when that
component is not in the run, or the options the run's components do take.

Two exceptions, both deliberate:

- Options of any registered *dataset* are accepted by every run: the dataset is picked
  by the command (``reason eval --dataset``, ``reason solve --task``), not by the
  Config, so the runtime cannot tell whether one is in use.
- A run with a component that declares nothing (``options = None``: a third-party
  plugin written before declarations) cannot know which keys that component reads, so
  unknown keys are accepted, with a debug log naming them and the undeclared component.
  Values of declared keys are still checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from attrs import frozen

from .config import Config
from .errors import UsageError
from .log import get_logger
from .options import Declarations, declared
from .registry import KINDS, PluginRegistry


@frozen
class Part:
    """One component of a run, by kind and the name the user gave."""

    kind: str
    spec: str
    options: Declarations | None

    @property
    def label(self) -> str:
        return f"{self.kind} {self.spec.partition(':')[0]}"


def run_parts(registry: PluginRegistry, configs: Iterable[Config], backend: Any = None) -> list[Part]:
    """The components of a run whose configs are ``configs`` (the run's, then its
    sub-policies'), each once. ``backend``: an injected backend instance, whose class
    declares its options."""
    parts: dict[tuple[str, str], Part] = {}

    def add(kind: str, spec: str, factory: Any) -> None:
        parts.setdefault((kind, spec.partition(":")[0]), Part(kind, spec, declared(factory)))

    for index, config in enumerate(configs):
        if index == 0 and backend is not None:  # injected: the config does not name it, so its class does
            add("backend", type(backend).__name__, type(backend))
        elif index == 0:
            add("backend", config.backend, registry.lookup("backend", config.backend)[0].factory)
        specs = [("search", config.search), ("splitter", config.splitter)]
        specs += [("verifier", config.verifier)] if config.verifier else []
        specs += [("reflection", spec) for spec in config.reflect]
        for kind, spec in specs:
            add(kind, spec, registry.lookup(kind, spec)[0].factory)
    return list(parts.values())


def dataset_options(registry: PluginRegistry) -> dict[str, str]:
    """Every registered dataset's option names, each with the dataset declaring it."""
    names: dict[str, str] = {}
    for name in registry.names("dataset"):
        for option in registry.declared_options("dataset", name) or ():
            names.setdefault(option.name, f"dataset {name}")
    return names


def check_options(config: Config, parts: Sequence[Part], registry: PluginRegistry, unknown: bool = True) -> None:
    """Raise a :class:`UsageError` for a value that does not fit its declaration, and
    (with ``unknown``) for a key no component of the run declares (see the module
    docstring for when that is allowed)."""
    declared_keys: set[str] = set()
    for part in parts:
        for option in part.options or ():
            declared_keys.add(option.name)
            if option.name in config.options:
                try:
                    option.parse(config.options[option.name])
                except UsageError as exc:
                    raise UsageError(f"{exc} (an option of {part.label})") from None
    if not unknown:
        return
    datasets = dataset_options(registry)
    given = [key for key, value in config.options.items() if value is not None]  # None: unset (the Python API's)
    strays = sorted(key for key in given if key not in declared_keys and key not in datasets)
    if not strays:
        return
    undeclared = [part.label for part in parts if part.options is None]
    if undeclared:
        get_logger().debug("options not checked: a component does not declare its options", keys=strays, components=undeclared)
        return
    key = strays[0]
    raise UsageError(f"-o {key}={config.options[key]!r}: " + _why_unknown(key, parts, registry, datasets))


def _why_unknown(key: str, parts: Sequence[Part], registry: PluginRegistry, datasets: Mapping[str, str]) -> str:
    running = ", ".join(part.label for part in parts)
    owners = [
        f"{kind} {name}"
        for kind in KINDS
        for name in registry.names(kind)
        if any(option.name == key for option in registry.declared_options(kind, name) or ())
    ]
    if owners:
        return f"{key} is an option of {' and '.join(owners)}, which this run does not use (it runs {running})"
    taken = [f"{part.label}: {', '.join(o.name for o in part.options)}" for part in parts if part.options]
    taken.append(f"any dataset: {', '.join(sorted(datasets))}")
    return (
        f"unknown option {key}; no component of this run ({running}) takes it. "
        f"The options it takes are {'; '.join(taken)} (`reason plugins` lists every component's options)"
    )
