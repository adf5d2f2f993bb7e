"""Everything observable about a run, as frozen attrs classes.

The runtime emits events; the ``reason_on_event`` hook and ``Runtime.stream`` deliver
them. Progress bars, logs and the tree recorder are consumers of events, not special
cases inside the search loop. Every event carries the id of the task it belongs to
(``""`` for runtime-wide events such as a backend call) and a monotonic timestamp.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
from attrs import field, frozen

from .types import Usage


@frozen(kw_only=True)
class Event:
    task_id: str = ""
    at: float = field(factory=time.monotonic)

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self, value_serializer=_serialize)
        data["event"] = self.kind
        return data


def _serialize(inst: Any, field: Any, value: Any) -> Any:
    if isinstance(value, Usage):
        return value.to_dict()
    return value


@frozen(kw_only=True)
class SearchStarted(Event):
    search: str
    config: dict[str, Any] = field(factory=dict)


@frozen(kw_only=True)
class StepsGenerated(Event):
    """New nodes were added to the tree from one generate request."""

    node_ids: tuple[int, ...]
    parent_id: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float


@frozen(kw_only=True)
class TextGenerated(Event):
    """The text so far of one sample being generated after node ``parent_id``. Only for
    ``Runtime.stream(..., tokens=True)`` and backends that stream (transformers, vllm); the
    sample's finished step arrives as :class:`StepsGenerated` as usual."""

    parent_id: int
    sample: int
    text: str


@frozen(kw_only=True)
class StepsScored(Event):
    verifier: str
    node_ids: tuple[int, ...]
    scores: tuple[float, ...]
    seconds: float


@frozen(kw_only=True)
class ReflectionInjected(Event):
    trigger: str
    node_id: int
    parent_id: int
    text: str


@frozen(kw_only=True)
class NodesPruned(Event):
    node_ids: tuple[int, ...]
    reason: str = ""


@frozen(kw_only=True)
class AnswerFound(Event):
    """A path finished with an (extracted) answer."""

    node_id: int
    answer: str | None
    score: float | None


@frozen(kw_only=True)
class SearchFinished(Event):
    answer: str | None
    score: float | None
    usage: Usage
    seconds: float


@frozen(kw_only=True)
class SearchFailed(Event):
    error: str


@frozen(kw_only=True)
class BackendCalled(Event):
    """One batched backend call served ``requests`` requests from ``tasks`` tasks."""

    requests: int
    sequences: int
    tasks: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float


@frozen(kw_only=True)
class EngineStep(Event):
    """One iteration of a continuous-batching engine: newcomers prefilled, then one decode
    step over every running sequence. Emitted by the engine (``task_id`` is empty).

    ``running`` sequences decoded in this step, of at most ``max_batch``; ``waiting``
    sequences could not join for lack of room; ``prefill_tokens`` prompt tokens were
    encoded for the newcomers and ``reused_tokens`` came from the prefix cache instead;
    ``decode_tokens`` tokens were generated."""

    engine: str
    running: int
    max_batch: int
    waiting: int
    admitted: int
    prefill_tokens: int
    reused_tokens: int
    decode_tokens: int
    seconds: float


@frozen(kw_only=True)
class VerifierCalled(Event):
    verifier: str
    paths: int
    tasks: int
    seconds: float
