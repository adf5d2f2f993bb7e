"""The data that flows between the runtime and its components.

Everything here is a frozen attrs class: requests go to backends and verifiers,
results come back, and none of them is mutated on the way. Components of every kind
(built-in or third-party) speak only these types.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

from attrs import field, frozen, validators

FinishReason = Literal["stop", "length", "eos"]
"""Why a completion ended: a stop string matched (``stop``, the string is included in the
text), ``max_tokens`` was reached (``length``), or the model emitted end-of-sequence (``eos``:
the path is finished)."""


# Typed converters for tuple fields: mypy's attrs plugin takes a field's argument type from
# its converter, and ``converter=tuple`` leaves the element type unknown.


def int_tuple(values: Iterable[int]) -> tuple[int, ...]:
    return tuple(values)


def float_tuple(values: Iterable[float]) -> tuple[float, ...]:
    return tuple(values)


def str_tuple(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


def _float_rows(rows: Iterable[Iterable[float]]) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(row) for row in rows)


def _layers(layers: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted(set(layers)))


def _messages(messages: Iterable[dict[str, str]]) -> tuple[dict[str, str], ...]:
    return tuple(messages)


def _non_negative(instance: Any, attribute: Any, value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


@frozen
class SamplingParams:
    """How to sample one completion. Mirrors the knobs every backend understands."""

    temperature: float = field(default=0.8, validator=_non_negative)
    top_p: float = field(default=1.0)
    max_tokens: int = field(default=512)
    stop: tuple[str, ...] = field(default=(), converter=str_tuple)
    seed: int | None = None
    logprobs: int = 5
    """How many top alternatives to report per generated token (0 = none)."""
    hidden_layers: tuple[int, ...] = field(default=(), converter=_layers)
    """Residual-stream layers whose state at every generated token the backend should
    return (``Completion.hidden``), numbered as transformers' ``hidden_states`` (0 the
    embeddings, ``k`` block ``k``'s output). Set by runs whose verifier reads the policy's
    states (:attr:`reason.Verifier.hidden_layers`); backends that cannot capture them
    (vLLM, servers) ignore it and the verifier runs the policy itself."""

    @top_p.validator
    def _check_top_p(self, attribute: Any, value: float) -> None:
        if not 0 < value <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {value}")

    @max_tokens.validator
    def _check_max_tokens(self, attribute: Any, value: int) -> None:
        if value < 1:
            raise ValueError(f"max_tokens must be >= 1, got {value}")


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed made from ``seed`` and ``parts``: the same on every run, and
    unrelated to the seed made from any other parts."""
    text = ":".join(str(part) for part in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index`` of a request seeded with ``seed``. Every backend that
    can seeds each sample with it, so sample ``i`` draws the same numbers whatever else is
    in the batch and whatever the request's ``n``."""
    return derive_seed(seed, index)


@frozen
class Watch:
    """A search's say over a sample while it is being generated: every ``every``
    generated tokens, a backend that :attr:`~reason.Backend.watches` calls
    ``stop(completion_so_far)`` and ends the sample there (finish reason ``length``, so
    the path could go on) when it returns True. DeepConf's online traces run as one
    request each this way, where they would otherwise be a new request per chunk that
    re-sends the trace.

    ``stop`` runs on the backend's thread, between decode steps: keep it quick and pure."""

    every: int = field(validator=validators.ge(1))
    stop: Callable[[Completion], bool]


@frozen
class Continuation:
    """What a request's prompt is made of when it extends a path: ``head`` (text: the
    chat prompt) followed by ``sampled``, the token ids the model sampled after it.

    A backend that encodes prompts itself reads ``encode(head) + sampled`` instead of
    encoding the whole text again. Re-encoding text can split it into other tokens than
    were sampled ("\\n\\n" sampled as two tokens comes back as one, "." and "\\n\\n" as
    ".\\n\\n"): the model would then continue a path it did not write, and the cached keys
    of the path's earlier steps would match only up to the first such place."""

    head: str
    sampled: tuple[int, ...] = field(converter=int_tuple)


@frozen
class GenerateRequest:
    """Continue ``prompt`` (raw text, chat template already applied) ``n`` times."""

    prompt: str
    params: SamplingParams = field(factory=SamplingParams)
    n: int = field(default=1, validator=validators.ge(1))
    watch: Watch | None = field(default=None, eq=False, repr=False)
    """Checks each sample as it grows (see :class:`Watch`); backends that do not
    :attr:`~reason.Backend.watches` ignore it, so callers ask only where they do."""
    continues: Continuation | None = field(default=None, eq=False, repr=False)
    """``prompt`` as a head and the tokens sampled after it, where the caller has them
    (a search extending a path): see :class:`Continuation`. Backends that take text
    (a remote server) send ``prompt`` and ignore it."""


@frozen
class Completion:
    """One sampled continuation.

    ``logprobs[i]`` is the log-probability of generated token ``i``;
    ``top_logprobs[i]`` holds the log-probabilities of the top-k alternatives at that
    position, highest first (the sampled token need not be among them).
    """

    text: str
    token_ids: tuple[int, ...] = field(converter=int_tuple)
    logprobs: tuple[float, ...] = field(converter=float_tuple)
    top_logprobs: tuple[tuple[float, ...], ...] = field(converter=_float_rows)
    finish_reason: FinishReason
    prompt_tokens: int = 0
    cached_tokens: int = 0
    """Of the ``prompt_tokens``, how many the engine did not encode for this sample: their
    keys and values came from its prefix cache, or from a sibling sample's pass (0 when the
    backend does not say)."""
    hidden: Any = field(default=None, eq=False, repr=False)
    """``[tokens, layers, hidden]`` tensor: the states at ``params.hidden_layers`` (ascending)
    of every generated token, when the request asked for them and the backend captures
    them; else ``None``."""

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def finished(self) -> bool:
        """True when the model itself ended the text (EOS), so the path cannot continue."""
        return self.finish_reason == "eos"


@frozen
class Step:
    """One step of a reasoning path, as generated (or injected, for reflections)."""

    text: str
    token_ids: tuple[int, ...] = field(default=(), converter=int_tuple)
    logprobs: tuple[float, ...] = field(default=(), converter=float_tuple)
    top_logprobs: tuple[tuple[float, ...], ...] = field(default=(), converter=_float_rows)
    finish_reason: FinishReason | None = None
    injected: bool = False
    """True for text the runtime inserted (a reflection), not sampled from the model."""
    hidden: Any = field(default=None, eq=False, repr=False)
    """The policy's states at the step's tokens (:attr:`Completion.hidden`), or ``None``."""

    @classmethod
    def from_completion(cls, completion: Completion) -> Step:
        return cls(
            text=completion.text,
            token_ids=completion.token_ids,
            logprobs=completion.logprobs,
            top_logprobs=completion.top_logprobs,
            finish_reason=completion.finish_reason,
            hidden=completion.hidden,
        )


@frozen
class Task:
    """A problem to solve.

    ``kind`` selects prompting and grading: ``math`` (an answer to extract and compare) or
    ``code`` (a program to run; ``metadata`` carries e.g. HumanEval's prompt, test and
    entry_point). ``reference`` is the known answer when there is one (evaluation).
    ``history``: the conversation before ``question``, as chat messages (``{"role":
    "user" | "assistant", "content": ...}``), which reach the model's chat template as
    turns of their own; the search writes the answer to the last turn, ``question``.
    """

    question: str = field()
    id: str = "task"
    kind: str = "math"
    reference: str | None = None
    metadata: dict[str, Any] = field(factory=dict)
    history: tuple[dict[str, str], ...] = field(default=(), converter=_messages)

    @question.validator
    def _check_question(self, attribute: Any, value: str) -> None:
        if not value or not value.strip():
            raise ValueError("the question is empty: pass the question text, --file PATH, or pipe it on stdin")

    @history.validator
    def _check_history(self, attribute: Any, value: tuple[dict[str, str], ...]) -> None:
        for i, message in enumerate(value):
            if set(message) != {"role", "content"} or message["role"] not in ("user", "assistant"):
                raise ValueError(f"history[{i}] must be {{'role': 'user' | 'assistant', 'content': TEXT}}, got {message!r}")
            if not isinstance(message["content"], str):
                raise ValueError(f"history[{i}]'s content must be text")


def _steps(steps: Iterable[Step]) -> tuple[Step, ...]:
    return tuple(steps)


@frozen
class ScoreRequest:
    """Score every step of one path.

    ``prompt`` is the formatted prompt the path continues; ``steps`` are the steps so far
    (generated and injected), in order.
    """

    task: Task
    prompt: str
    steps: tuple[Step, ...] = field(converter=_steps)

    @property
    def text(self) -> str:
        """The path's text: every step concatenated."""
        return "".join(step.text for step in self.steps)


@frozen
class Score:
    """A verifier's verdict on one path: one score per step in [0, 1] (higher is better).

    ``feedback`` is text the model can act on (a failing test's error), used by the
    ``on-verifier-fail`` reflection trigger. ``passed`` is set by verifiers with an exact
    verdict (the code sandbox); ``None`` where there is none.
    """

    step_scores: tuple[float, ...] = field(converter=float_tuple)
    feedback: str | None = None
    passed: bool | None = None

    @property
    def last(self) -> float:
        return self.step_scores[-1] if self.step_scores else 0.0


Aggregation = Literal["last", "min", "prod", "mean"]
AGGREGATIONS: tuple[str, ...] = ("last", "min", "prod", "mean")


def aggregate(step_scores: tuple[float, ...] | list[float], how: str = "last") -> float:
    """Reduce per-step scores to one solution score (PRM literature: last, min, prod, mean)."""
    if not step_scores:
        return 0.0
    if how == "last":
        return float(step_scores[-1])
    if how == "min":
        return float(min(step_scores))
    if how == "prod":
        return float(math.prod(step_scores))
    if how == "mean":
        return float(sum(step_scores) / len(step_scores))
    raise ValueError(f"unknown aggregation {how!r}: choose one of {', '.join(AGGREGATIONS)}")


@frozen
class Usage:
    """What a solve cost. Every strategy reports the same fields, so strategies compare at
    equal budget."""

    prompt_tokens: int = 0
    """Prompt tokens sent, once per request (its ``n`` samples share the prompt)."""
    encoded_tokens: int = 0
    """Prompt tokens the engine actually encoded, over every sample: ``prompt_tokens`` minus
    what its prefix cache served, summed over samples. ``encoded / prompt`` is what
    re-sending a path costs (0 when a continued path's prefix is reused whole; ``n`` when
    each of ``n`` samples encodes the prompt again)."""
    completion_tokens: int = 0
    model_calls: int = 0
    """Backend calls this solve took part in (one batched call may serve many solves)."""
    sequences: int = 0
    """Completions sampled (a request with n=4 counts 4)."""
    verifier_calls: int = 0
    seconds: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            encoded_tokens=self.encoded_tokens + other.encoded_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            model_calls=self.model_calls + other.model_calls,
            sequences=self.sequences + other.sequences,
            verifier_calls=self.verifier_calls + other.verifier_calls,
            seconds=self.seconds + other.seconds,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "encoded_tokens": self.encoded_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "model_calls": self.model_calls,
            "sequences": self.sequences,
            "verifier_calls": self.verifier_calls,
            "seconds": round(self.seconds, 3),
        }


@frozen
class Candidate:
    """One finished path a search considered as an answer."""

    node_id: int
    text: str
    answer: str | None
    score: float | None
    step_scores: tuple[float, ...] = field(default=(), converter=float_tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "answer": self.answer,
            "score": self.score,
            "step_scores": list(self.step_scores),
            "text": self.text,
        }
