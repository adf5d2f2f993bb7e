"""What the ``vllm`` engine did: :class:`VLLMStats`, and the stat logger through which vLLM
reports each engine step (:class:`StepRecorder`, mixed into :class:`.VLLMBackend`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from attrs import define

from reason.engine import EngineStats
from reason.events import EngineStep
from reason.log import get_logger

log = get_logger()


@define
class VLLMStats(EngineStats):
    """:class:`EngineStats` (the same counters as the transformers backend's, so a
    benchmark reads both) plus vLLM's prefix-cache counters and the engine's load time."""

    prefix_cache_queries: int = 0
    """Prompt tokens looked up in the prefix cache (vLLM's scheduler counters)."""
    prefix_cache_hits: int = 0
    load_seconds: float = 0.0

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "prefix_cache_hit_rate": self.prefix_cache_hit_rate}


class StepRecorder:
    """Feeds :attr:`stats` from vLLM's per-step scheduler counters and emits an
    ``EngineStep`` per step; mixed into :class:`.VLLMBackend`, which sets ``stats``,
    ``max_batch`` and ``_last_record``."""

    stats: VLLMStats
    max_batch: int
    _last_record: float
    emit: Callable[[Any], None]

    def _stat_logger_factory(self) -> Any:
        """A vLLM stat logger that feeds :attr:`stats` and emits an ``EngineStep`` per
        engine step (vLLM calls it on the engine's loop with the scheduler's counters)."""
        try:
            from vllm.v1.metrics.loggers import StatLoggerBase
        except ImportError:
            return None
        backend = self

        class _Recorder(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any, *args: Any, **kwargs: Any) -> None:
                try:
                    backend._record(scheduler_stats, iteration_stats)
                except Exception as exc:  # statistics must never break generation
                    log.debug("vllm stats not recorded", error=str(exc))

            def log_engine_initialized(self) -> None:
                pass

        return _Recorder

    def _record(self, scheduler: Any, iteration: Any) -> None:
        now = time.perf_counter()
        seconds, self._last_record = now - self._last_record, now
        if scheduler is None:
            return
        stats = self.stats
        cache = getattr(scheduler, "prefix_cache_stats", None)
        queries = int(getattr(cache, "queries", 0) or 0)
        hits = int(getattr(cache, "hits", 0) or 0)
        admitted = int(getattr(cache, "requests", 0) or 0)
        running = int(scheduler.num_running_reqs)
        waiting = int(scheduler.num_waiting_reqs)
        decoded = int(getattr(iteration, "num_generation_tokens", 0) or 0)
        stats.prefix_cache_queries += queries
        stats.prefix_cache_hits += hits
        stats.reused_tokens += hits
        stats.prefill_tokens += queries - hits
        stats.decode_tokens += decoded
        if running:
            stats.decode_steps += 1
            stats.decode_rows += running
            if waiting:
                stats.waiting_steps += 1
                stats.waiting_rows += running
        if running or waiting or queries or decoded:
            self.emit(
                EngineStep(
                    engine="vllm",
                    running=running,
                    max_batch=self.max_batch,
                    waiting=waiting,
                    admitted=admitted,
                    prefill_tokens=queries - hits,
                    reused_tokens=hits,
                    decode_tokens=decoded,
                    seconds=seconds,
                )
            )
