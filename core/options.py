"""Typed options, one class per component: what it declares, how a run's ``-o`` values
reach it, how a run is checked against them, and how people read them.

A component nests its options, declared once (simonw/llm's shape)::

    class MCTS(SearchPolicy):
        class Options(reason.Options):
            iterations = reason.Option(int, None, minimum=1, help="select-expand-simulate rounds [--n]")
            exploration = reason.Option(float, 1.414, minimum=0, help="UCT exploration constant")

        options: Options

and reads them parsed: ``self.options.exploration`` (a float, range-checked, defaulted).
A user names an option by its component: ``-o mcts.exploration=2`` on the command line,
``[options.mcts]`` in a recipe, ``options={"mcts": {"exploration": 2}}`` from Python. The
flat names of earlier releases (``-o exploration=2``, ``-o prm_model=DIR``: the class's
:attr:`Options.prefix` and the option's name, or its ``alias``) are still accepted, for
one release, by every component of the run that declares them.

A key that no component of the run takes, a value that does not fit, an unknown option
of a named component: each stops the run before it starts, with one message naming the
key. The README's option reference and ``reason plugins`` are rendered from the same
declarations (:func:`markdown`, :func:`plugin_lines`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, overload

from attrs import frozen

from .config import MOVED, Config
from .errors import UsageError

if TYPE_CHECKING:
    from typing import Self

    from .registry import PluginInfo, PluginRegistry

T = TypeVar("T")

_TYPE_NAMES = {int: "int", float: "float", bool: "bool", str: "str", list: "list"}
_EXPECTS = {int: "a whole number", float: "a number", bool: "true or false", str: "text", list: "a list, e.g. [1, 2]"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def convert(value: Any, kind: type) -> Any:
    """``value`` as ``kind``, or None when it is not one (no silent truncation of 2.5 to 2)."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        return True if text in _TRUE else False if text in _FALSE else None
    if kind is str:
        return str(value)
    if kind is list:
        return list(value) if isinstance(value, list | tuple) else None
    if isinstance(value, bool):  # True is an int to Python, never to a user
        return None
    try:
        converted = kind(value)
    except (TypeError, ValueError):
        return None
    if kind is int and isinstance(value, float) and value != converted:
        return None
    return converted


class Option(Generic[T]):
    """One option of a component's :class:`Options`; its name is the attribute's. On an
    :class:`Options` instance the attribute reads the parsed value. ``default`` None
    means "unset": the component decides (its help says how, e.g. "[--n]")."""

    @overload
    def __init__(
        self: Option[T | None],
        type: type[T],  # noqa: A002
        default: None = None,
        *,
        help: str = "",  # noqa: A002
        minimum: float | None = None,
        maximum: float | None = None,
        choices: Sequence[str] = (),
        alias: str | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self: Option[T],
        type: type[T],  # noqa: A002
        default: T,
        *,
        help: str = "",  # noqa: A002
        minimum: float | None = None,
        maximum: float | None = None,
        choices: Sequence[str] = (),
        alias: str | None = None,
    ) -> None: ...
    def __init__(
        self,
        type: type[T],  # noqa: A002 -- the option's type, as a user reads the declaration
        default: Any = None,
        *,
        help: str = "",  # noqa: A002
        minimum: float | None = None,
        maximum: float | None = None,
        choices: Sequence[str] = (),
        alias: str | None = None,
    ) -> None:
        if type not in _TYPE_NAMES:
            raise TypeError(f"an option's type must be one of int, float, bool, str, list, not {type!r}")
        self.type, self.default, self.help = type, default, help
        self.minimum, self.maximum, self.choices = minimum, maximum, tuple(choices)
        self.alias = alias
        """Its flat name of earlier releases, where not the class's prefix + its name."""
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type) -> Option[T]: ...
    @overload
    def __get__(self, instance: Options, owner: type) -> T: ...
    def __get__(self, instance: Options | None, owner: type) -> Option[T] | T:
        return self if instance is None else instance._values[self.name]

    def __set__(self, instance: Options, value: Any) -> None:
        raise AttributeError(f"options are immutable (a kept component shares them): use .replace({self.name}=...)")

    def parse(self, value: Any, key: str | None = None) -> Any:
        """``value`` converted and checked; a :class:`UsageError` naming the option (as
        ``key``, the way the user wrote it) and what it expects otherwise. None: unset."""
        if value is None:
            return None
        converted = convert(value, self.type)
        if self.choices and isinstance(converted, str):
            converted = converted.lower()
        if converted is None or not self._fits(converted):
            raise UsageError(f"-o {key or self.name}={value!r}: must be {self.expects()}", param=f"options.{key or self.name}")
        return converted

    def _fits(self, value: Any) -> bool:
        if self.choices and value not in self.choices:
            return False
        if self.minimum is not None and value < self.minimum:
            return False
        return self.maximum is None or value <= self.maximum

    def expects(self) -> str:
        """What a value must be, in words: "a whole number >= 1", "one of visits, value"."""
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        return _EXPECTS[self.type] + self._range(" >= ", " <= ", " in ")

    def kind(self) -> str:
        """Short form for tables: "int >= 1", "visits|value", "float in [0, 1]"."""
        if self.choices:
            return "|".join(self.choices)
        return _TYPE_NAMES[self.type] + self._range(" >= ", " <= ", " in ")

    def _range(self, at_least: str, at_most: str, within: str) -> str:
        low, high = _number(self.minimum), _number(self.maximum)
        if low is not None and high is not None:
            return f"{within}[{low}, {high}]"
        if low is not None:
            return f"{at_least}{low}"
        return f"{at_most}{high}" if high is not None else ""


def _number(value: float | None) -> str | None:
    if value is None:
        return None
    return str(int(value)) if float(value).is_integer() else str(value)


def _frozen(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    return tuple(_frozen(v) for v in value) if isinstance(value, list | tuple) else value


class Options:
    """A component's options, parsed: unknown names are refused, every value converted
    and checked by its :class:`Option`. Immutable and hashable (a Runtime keeps one
    verifier per distinct options). Subclass it to declare options; a subclass of a
    subclass adds to its parent's (shared groups, e.g. the scoring models' batch size)."""

    declared: ClassVar[tuple[Option[Any], ...]] = ()
    """Every option of the class, its own first (filled in by the class itself)."""

    prefix: ClassVar[str] = ""
    """How the flat names of earlier releases started (``"prm_"``: ``prm_model`` is
    ``prm.model``), kept as aliases for one release. It applies to the options the class
    declares, and to inherited ones whose class sets no prefix of its own."""

    _aliases: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        merged: dict[str, Option[Any]] = {}  # the class's own first, then its bases' (a redefinition wins)
        for base in cls.__mro__:
            for name, value in vars(base).items():
                if isinstance(value, Option) and name not in merged:
                    merged[name] = value
        cls.declared = tuple(merged.values())
        own = vars(cls).get("prefix", "")
        cls._aliases = {}
        for name, option in merged.items():
            definer = next(base for base in cls.__mro__ if name in vars(base))
            cls._aliases[name] = option.alias or vars(definer).get("prefix", own) + name

    def __init__(self, **values: Any) -> None:
        known = {option.name: option for option in self.declared}
        for name in values:
            if name not in known:
                raise UsageError(f"unknown option {name}; {self._takes()}", param=f"options.{name}")
        self._values = {name: option.parse(values.get(name, option.default)) for name, option in known.items()}

    @classmethod
    def _takes(cls) -> str:
        return f"it takes {', '.join(o.name for o in cls.declared)}" if cls.declared else "it takes none"

    @classmethod
    def alias(cls, option: Option[Any]) -> str:
        """``option``'s flat name of earlier releases."""
        return cls._aliases[option.name]

    @classmethod
    def given(cls, raw: Mapping[str, Any], component: str | None = None) -> dict[str, tuple[str, Any]]:
        """The values ``raw`` (a Config's ``options``) gives this class, by option name,
        each with the key it was given by: a flat alias, then (for ``component``, the
        registered name) its table ``raw[component]`` and its dotted keys, each winning
        over the one before. Dotted or tabled names that are no option are kept, so that
        building refuses them."""
        aliases = {cls.alias(option): option.name for option in cls.declared}
        found = {aliases[key]: (key, value) for key, value in raw.items() if key in aliases and not isinstance(value, Mapping)}
        if component:
            table = raw.get(component)
            if isinstance(table, Mapping):
                found.update({name: (f"{component}.{name}", value) for name, value in table.items()})
            found.update({key.partition(".")[2]: (key, value) for key, value in raw.items() if key.startswith(component + ".")})
        return {name: given for name, given in found.items() if given[1] is not None}

    @classmethod
    def from_run(cls, raw: Mapping[str, Any], component: str | None = None) -> Self:
        """This class's options in a run whose ``-o`` values are ``raw`` (see :meth:`given`)."""
        given = cls.given(raw, component)
        known = {option.name: option for option in cls.declared}
        for name, (key, value) in given.items():
            if name not in known:
                message = f"-o {key}={value!r}: {component or cls.__qualname__} has no option {name}; {cls._takes()}"
                raise UsageError(message, param=f"options.{key}")
            known[name].parse(value, key)
        return cls(**{name: value for name, (_, value) in given.items()})

    def replace(self, **changes: Any) -> Self:
        return type(self)(**{**self._values, **changes})

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Options) and type(other) is type(self) and other._values == self._values

    def __hash__(self) -> int:
        return hash((type(self), _frozen(self._values)))

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"


def declared(factory: Any) -> type[Options] | None:
    """The :class:`Options` class of the components ``factory`` builds (a component class's,
    or a :func:`reason.registry.lazy` target's); None for a plain function factory."""
    options = getattr(factory, "Options", None)
    return options if isinstance(options, type) and issubclass(options, Options) else None


# -- a run's check -----------------------------------------------------------------------


@frozen
class Part:
    """One component of a run: its kind, its registered name, its options."""

    kind: str
    name: str
    options: type[Options]

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"


def run_parts(registry: PluginRegistry, configs: Iterable[Config], backend: Any = None) -> list[Part]:
    """The components of a run whose configs are ``configs`` (the run's, then its
    sub-policies'), each once. ``backend``: an injected backend instance, named by its class."""
    parts: dict[tuple[str, str], Part] = {}

    def add(kind: str, spec: str, factory: Any) -> None:
        name = spec.partition(":")[0]
        parts.setdefault((kind, name), Part(kind, name, declared(factory) or Options))

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


def dataset_parts(registry: PluginRegistry) -> list[Part]:
    """Every registered dataset: ``reason eval --dataset`` and ``reason solve --task`` pick
    one outside the Config, so any run accepts their options."""
    return [Part("dataset", name, registry.declared_options("dataset", name) or Options) for name in registry.names("dataset")]


def check_options(config: Config, parts: Sequence[Part], registry: PluginRegistry, unknown: bool = True) -> None:
    """Raise a :class:`UsageError` for a value that does not fit its declaration, an
    unknown option of a named component, and (with ``unknown``) a key that no component
    of the run (nor any dataset) takes."""
    for part in parts:
        try:
            part.options.from_run(config.options, part.name)
        except UsageError as exc:
            raise UsageError(f"{exc} (an option of {part.label})", param=exc.param) from None
    if not unknown:
        return
    datasets = dataset_parts(registry)
    names = {part.name for part in [*parts, *datasets]}
    flat = {part.options.alias(option) for part in [*parts, *datasets] for option in part.options.declared}
    for key, value in config.options.items():
        if value is None:  # unset (the Python API's)
            continue
        owner = key if isinstance(value, Mapping) else key.partition(".")[0] if "." in key else None
        if owner in names or (owner is None and (key in flat or key in MOVED)):
            continue  # MOVED: Config fields of earlier releases, which any run took
        shown = f"[options.{key}]" if isinstance(value, Mapping) else f"-o {key}={value!r}"
        raise UsageError(f"{shown}: " + _why_unknown(owner, key, parts, registry), param=f"options.{key}")


def _why_unknown(owner: str | None, key: str, parts: Sequence[Part], registry: PluginRegistry) -> str:
    running = ", ".join(part.label for part in parts)
    if owner is not None:
        kinds = [kind for kind in registry.components if owner in registry.names(kind)]
        if kinds:
            return f"{' and '.join(f'{kind} {owner}' for kind in kinds)} is not part of this run (it runs {running})"
        return f"no component is named {owner}; this run has {', '.join(part.name for part in parts)}"
    owners = [
        f"{kind} {name}"
        for kind in registry.components
        for name in registry.names(kind)
        if any(cls.alias(option) == key for cls in [registry.declared_options(kind, name) or Options] for option in cls.declared)
    ]
    if owners:
        return f"{key} is an option of {' and '.join(owners)}, which this run does not use (it runs {running})"
    taken = [f"{part.label}: {', '.join(o.name for o in part.options.declared)}" for part in parts if part.options.declared]
    return (
        f"unknown option {key}; no component of this run ({running}) takes it. Name an option by its component, "
        f"e.g. -o {parts[0].name}.NAME=VALUE; the run's are {'; '.join(taken)} (`reason plugins` lists every component's)"
    )


# -- what people read --------------------------------------------------------------------

README_START = "<!-- options: generated by scripts/options_doc.py from the components' declarations; do not edit by hand -->"
README_END = "<!-- /options -->"

_LONGEST_DEFAULT = 32


def show_default(option: Option[Any]) -> str:
    """The default as a user would type it ("" when unset: the help says what applies)."""
    value = option.default
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = json.dumps(value) if isinstance(value, str) else str(value)
    return text if len(text) <= _LONGEST_DEFAULT else text[: _LONGEST_DEFAULT - 4] + '..."'


def describe(cls: type[Options], option: Option[Any]) -> dict[str, Any]:
    """One option as ``reason plugins --json`` shows it."""
    return {
        "name": option.name,
        "type": option.kind(),
        "default": option.default,
        "help": option.help,
        "alias": cls.alias(option),
    }


def plugin_options(registry: PluginRegistry, info: PluginInfo) -> dict[str, dict[str, list[dict[str, Any]] | None]]:
    """What ``reason plugins --json`` shows: each registered component's options (None
    where its module cannot be imported)."""
    return {
        kind: {
            name: None if (cls := registry.declared_options(kind, name)) is None else [describe(cls, o) for o in cls.declared]
            for name in names
        }
        for kind, names in info.registers.items()
    }


def plugin_lines(registry: PluginRegistry, info: PluginInfo) -> Iterator[str]:
    """``reason plugins``' lines for one plugin's components and their options."""
    for kind, names in info.registers.items():
        yield f"    {kind}: {', '.join(names)}"
        plain = []
        for name in names:
            cls = registry.declared_options(kind, name) or Options
            if not cls.declared:
                plain.append(name)
                continue
            yield f"      {name}:"
            width = max(len(name) + len(o.name) + len(o.kind()) for o in cls.declared) + 2
            for o in cls.declared:
                default = show_default(o)
                default = f" (default {default})" if default else ""
                yield f"        -o {name}.{o.name}={o.kind():<{width - len(name) - len(o.name)}}{o.help}{default}"
        if plain:
            yield f"      no options: {', '.join(plain)}"


def markdown(registry: PluginRegistry) -> str:
    """The README's option reference: every built-in component's options, one table."""
    rows = [
        "| component | option | type | default | what it does | flat name (one more release) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    without = []
    for kind in registry.components:
        for name in registry.names(kind):
            registration = registry.components[kind][name]
            if not registry.plugins[registration.plugin].builtin:
                continue  # installed plugins differ per machine; `reason plugins` shows them
            cls = registry.declared_options(kind, name) or Options
            if not cls.declared:
                without.append(f"{kind} `{name}`")
            for o in cls.declared:
                default = f"`{show_default(o)}`" if o.default is not None else ""
                cells = [f"{kind} `{name}`", f"`{name}.{o.name}`", o.kind(), default, o.help, f"`{cls.alias(o)}`"]
                rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    rows.append("")
    rows.append(f"No options: {', '.join(without)}.")
    return "\n".join([README_START, *rows, README_END])


def replace_block(text: str, block: str) -> str:
    """``text`` (the README) with its generated block replaced by ``block``."""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no generated options block ({README_START!r} ... {README_END!r})")
    return text[:start] + block + text[end + len(README_END) :]
