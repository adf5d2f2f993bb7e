"""Typed ``-o`` options: what a component declares, and how a value is read.

A component lists the options it reads on its class, once::

    class MCTS(SearchPolicy):
        options = (
            Option("iterations", int, None, minimum=1, help="selection-expansion rounds [--n]"),
            Option("final", str, "visits", choices=("visits", "value"), help="how the answer is picked"),
        )

and reads them with ``self.option("iterations")``: converted, range-checked and
defaulted from that one declaration. The runtime checks every run's options against the
declarations of the run's components (:mod:`reason.option_check`), ``reason plugins``
lists them, and the README's option reference is generated from them
(``scripts/options_doc.py``).

A component that declares nothing (``options = None``, the default of third-party
components written before declarations) still reads with ``config.option(key, ...)``;
its presence makes the run's unknown-key check lenient (see :mod:`reason.option_check`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from attrs import field, frozen

from .errors import UsageError
from .types import str_tuple

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


@frozen
class Option:
    """One ``-o NAME=VALUE`` a component takes. ``default`` None means "unset": the
    component decides (its help says how, e.g. "[--n]" for the run's N)."""

    name: str
    type: type = str
    """int, float, bool, str or list (a TOML array; the component checks its items)."""
    default: Any = None
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = field(default=(), converter=str_tuple)

    def __attrs_post_init__(self) -> None:
        if self.type not in _TYPE_NAMES:
            raise TypeError(f"option {self.name}: type must be one of int, float, bool, str, list, not {self.type!r}")

    def parse(self, value: Any) -> Any:
        """``value`` converted and checked; a :class:`UsageError` naming the option and
        what it expects otherwise. None stays None (unset)."""
        if value is None:
            return None
        converted = convert(value, self.type)
        if self.choices and isinstance(converted, str):
            converted = converted.lower()
        if converted is None or not self._fits(converted):
            raise UsageError(f"-o {self.name}={value!r}: must be {self.expects()}")
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

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.kind(), "default": self.default, "help": self.help}


def _number(value: float | None) -> str | None:
    if value is None:
        return None
    return str(int(value)) if float(value).is_integer() else str(value)


Declarations = tuple[Option, ...]


def declared(factory: Any) -> Declarations | None:
    """The options a factory's components take (a class's ``options``, or what a
    :func:`reason.registry.lazy` factory's target declares); None when undeclared."""
    options = getattr(factory, "options", None)
    return tuple(options) if isinstance(options, tuple | list) else None


def read(declarations: Sequence[Option], options: Mapping[str, Any], name: str, owner: str = "a component") -> Any:
    """The value of option ``name`` from ``options`` (a Config's ``options``), parsed by
    its declaration in ``declarations``, or its default."""
    for option in declarations:
        if option.name == name:
            return option.parse(options.get(name, option.default))
    # a programming error, not a user's: the component forgot to declare what it reads
    raise LookupError(f"{owner} reads option {name!r} but does not declare it in its options")
