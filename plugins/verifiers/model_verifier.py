"""What the verifiers that read a scoring model share (``prm``, ``self-eval``): step
scores remembered by path prefix (:func:`prefix_keys`, :class:`ScoreCache`), their
counters (:class:`ScoringStats`), their options (:class:`ScoringOptions`) and their base
class (:class:`ModelVerifier`). The model itself is read by :mod:`.scoring`.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar

from attrs import define

import reason
from reason.components import Verifier
from reason.options import Option
from reason.types import Score, ScoreRequest

from .scoring import DEFAULT_BATCH_SIZE, ModelReader, ReadResult

DEFAULT_CACHE_SIZE = 100_000
DEFAULT_KV_TOKENS = 16_384


def prefix_keys(namespace: str, question: str, steps: Sequence[str]) -> list[bytes]:
    """One key per step: a hash chain, so key ``k`` names (namespace, question, steps[:k+1])
    and computing all of them costs one pass over the text."""
    digest = hashlib.blake2b(f"{namespace}\x00{question}".encode(), digest_size=16).digest()
    keys = []
    for step in steps:
        data = step.encode()
        digest = hashlib.blake2b(digest + len(data).to_bytes(8, "little") + data, digest_size=16).digest()
        keys.append(digest)
    return keys


class ScoreCache:
    """A bounded LRU map from prefix key to step score."""

    def __init__(self, capacity: int = DEFAULT_CACHE_SIZE) -> None:
        self.capacity = capacity
        self._data: OrderedDict[bytes, float] = OrderedDict()

    def get(self, key: bytes) -> float | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: bytes, value: float) -> None:
        if self.capacity <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()


@define
class ScoringStats:
    """Counters of a model-backed verifier, cumulative over its lifetime.

    ``steps`` are step scores returned, ``cached`` of them came from the prefix cache (or
    from another path of the same call), ``computed`` were read from a model forward.
    ``tokens`` ran through the model; ``reused`` tokens had their keys and values taken
    from the KV prefix cache instead.
    """

    calls: int = 0
    paths: int = 0
    steps: int = 0
    cached: int = 0
    computed: int = 0
    batches: int = 0
    tokens: int = 0
    reused: int = 0
    seconds: float = 0.0

    @property
    def hit_rate(self) -> float:
        return self.cached / self.steps if self.steps else 0.0

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0

    def record(self, paths: int, cached: int, computed: int, read: ReadResult | None, seconds: float) -> dict[str, Any]:
        """Count one ``score`` call; returns that call's own figures."""
        batches, tokens, reused = (read.batches, read.tokens, read.reused) if read else (0, 0, 0)
        self.calls += 1
        self.paths += paths
        self.steps += cached + computed
        self.cached += cached
        self.computed += computed
        self.batches += batches
        self.tokens += tokens
        self.reused += reused
        self.seconds += seconds
        return {
            "paths": paths,
            "steps": cached + computed,
            "cached": cached,
            "computed": computed,
            "batches": batches,
            "tokens": tokens,
            "reused_tokens": reused,
            "seconds": round(seconds, 4),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "paths": self.paths,
            "steps": self.steps,
            "cached": self.cached,
            "computed": self.computed,
            "hit_rate": round(self.hit_rate, 4),
            "batches": self.batches,
            "tokens": self.tokens,
            "reused_tokens": self.reused,
            "seconds": round(self.seconds, 4),
            "steps_per_second": round(self.steps_per_second, 2),
        }


class ScoringOptions(reason.Options):
    """The options of a verifier that reads a scoring model (each verifier's own prefix
    gave their flat names: ``prm_batch_size``, ``self_eval_batch_size``)."""

    batch_size = Option(int, DEFAULT_BATCH_SIZE, minimum=1, help="paths per forward pass")
    device = Option(str, None, help="the scoring model's device [--device, else auto]")
    dtype = Option(str, None, help="its weights dtype [--dtype, else float32 on CPU, bfloat16 on GPU]")
    cache_size = Option(int, DEFAULT_CACHE_SIZE, minimum=0, help="step scores remembered by path prefix")
    kv_cache_tokens = Option(
        int, DEFAULT_KV_TOKENS, minimum=0, help="keys and values kept so a grown path runs only its new tokens (0: off)"
    )


class ModelVerifier(Verifier):
    """What the verifiers that read a scoring model share (``prm``, ``self-eval``): their
    :class:`ScoringOptions`, a score cache by path prefix, reused keys and values. The
    model loads on the first ``score`` (subclasses implement ``load`` and ``_score``); one
    scoring call runs at a time.
    """

    Options: ClassVar[type[reason.Options]] = ScoringOptions
    options: ScoringOptions

    def __init__(self, config: Any, arg: str | None = None, **kwargs: Any) -> None:
        super().__init__(config, arg, **kwargs)
        self.batch_size = self.options.batch_size
        self.device = self.options.device or config.device
        self.dtype = self.options.dtype or config.dtype
        self.cache = ScoreCache(self.options.cache_size)
        self.kv_tokens = self.options.kv_cache_tokens
        self.stats = ScoringStats()
        self.last_call: dict[str, Any] = {}
        self._model: Any = None
        self._tokenizer: Any = None
        self._reader: ModelReader | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        raise NotImplementedError

    def _score(self, requests: Sequence[ScoreRequest]) -> list[Score]:
        raise NotImplementedError

    @property
    def tokenizer(self) -> Any:
        self.load()
        return self._tokenizer

    def score(self, requests: Sequence[ScoreRequest]) -> list[Score]:
        with self._lock:
            return self._score(requests)

    def close(self) -> None:
        self._model = self._reader = None
