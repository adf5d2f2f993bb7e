"""Run configuration: one attrs class, loadable from a TOML recipe, overridable by flags.

Components read what they need from it; each component's own settings go in
``options``, named by the component (``[options.prm]`` in a recipe, ``-o prm.model=DIR``
on the command line; see :mod:`reason.options`), so a third-party plugin never needs a
change here.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import attrs
from attrs import define, field

from .errors import UsageError
from .types import AGGREGATIONS, SamplingParams, str_tuple


def _positive(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    if value < 1:
        raise UsageError(f"--{attribute.name.replace('_', '-')} must be at least 1, got {value}", param=attribute.name)


def _non_negative(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if value < 0:
        raise UsageError(f"--{attribute.name.replace('_', '-')} must be >= 0, got {value}", param=attribute.name)


def _probability(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not 0 < value <= 1:
        raise UsageError(f"--{attribute.name.replace('_', '-')} must be in (0, 1], got {value}", param=attribute.name)


def _aggregation(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if value not in AGGREGATIONS:
        raise UsageError(
            f"--{attribute.name.replace('_', '-')} must be one of {', '.join(AGGREGATIONS)}, got {value!r}", param=attribute.name
        )


SOLVE_FIELDS: tuple[str, ...] = (
    "search",
    "reflect",
    "n",
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "logprobs",
    "system_prompt",
)
"""The fields a solve may change without another splitter or verifier: those take them
from each request, never from their ``config``."""

MOVED: tuple[str, ...] = ("beam_width", "max_steps", "weighted")
"""Fields of earlier releases, now the search policies' options (``beam.width``,
``beam.max_steps``, ``best-of-n.weighted`` ...): :meth:`Config.replace` and recipes still
take them, as those options' flat names."""


@define
class Config:
    """Everything a solve needs to know. Defaults are the embedded, CPU-friendly setup."""

    # components, by registered name ("name" or "name:arg")
    search: str = "best-of-n"
    backend: str = "transformers"
    splitter: str = "step"
    verifier: str | None = field(default="confidence", converter=lambda v: None if v in (None, "", "none") else v)
    """``None`` (or "none") = no verifier."""
    reflect: tuple[str, ...] = field(default=(), converter=str_tuple)

    # model
    model: str | None = None
    """Model for the backend: HF directory, hub id, GGUF file, or server model name.
    ``None`` = ``$REASON_MODEL``, else the packaged Qwen2.5-Coder-0.5B-Instruct
    (``smollm2`` names the small SmolLM2-135M-Instruct)."""
    device: str | None = None
    dtype: str | None = None

    # sampling
    n: int = field(default=4, validator=_positive)
    temperature: float = field(default=0.8, validator=_non_negative)
    top_p: float = field(default=1.0, validator=_probability)
    max_tokens: int = field(default=512, validator=_positive)
    """Token budget of one whole solution."""
    step_tokens: int = field(default=256, validator=_positive)
    """Token cap of one step (for the ``step``/``line`` splitters)."""
    seed: int | None = None
    logprobs: int = field(default=5, validator=_non_negative)

    # how step scores reduce to a path score, for every policy
    aggregation: str = field(default="last", validator=_aggregation)
    """last | min | prod | mean."""
    system_prompt: str | None = None

    options: dict[str, Any] = field(factory=dict)
    """The components' own settings, by component: ``{"prm": {"model": "/models/prm"}}``
    or ``{"prm.model": ...}``; the flat names of earlier releases (``prm_model``) too."""

    def sampling(self, **overrides: Any) -> SamplingParams:
        """The base sampling params for a whole solution."""
        values: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "logprobs": self.logprobs,
        }
        return SamplingParams(**{**values, **overrides})

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (validated); ``options`` are merged, not replaced.
        The fields that moved into the search policies' options (:data:`MOVED`) are taken
        as those options' flat names, for one more release."""
        moved = {name: changes.pop(name) for name in MOVED if name in changes}
        if "options" in changes or moved:
            changes["options"] = merge_options(self.options, {**moved, **changes.get("options", {})})
        return attrs.evolve(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in attrs.fields(cls)}

    @classmethod
    def from_recipe(cls, path: str | Path, **overrides: Any) -> Config:
        """Load a TOML recipe; ``overrides`` (flags the user gave) win over the file."""
        return cls().replace(**load_recipe(path)).replace(**overrides)


def merge_options(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied; a component's table (``{"prm": {...}}``) is merged
    key by key, so that ``-o prm.format=qwen`` keeps a recipe's ``[options.prm] model``."""
    merged = dict(base)
    for key, value in changes.items():
        old = merged.get(key)
        merged[key] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
    return merged


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe into Config field values, with a clear error for anything wrong."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"recipe {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"recipe {path} is not valid TOML: {exc}") from None
    known = Config.field_names() | set(MOVED)
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(
            f"recipe {path}: unknown key(s) {', '.join(unknown)}; known keys are {', '.join(sorted(known))}"
            " (put plugin settings under [options])"
        )
    if "reflect" in data and isinstance(data["reflect"], str):
        data["reflect"] = (data["reflect"],)
    return data
