"""Prometheus metrics of ``reason serve`` at ``GET /metrics`` (prometheus_client's text format).

Each app has its own registry (two servers in one process, as in the tests, do not share
counters). Requests are counted by route and status code by an ASGI middleware, so every
answer is counted, 401s and 429s included; the searches' tokens and verifier calls when a
search finishes (a cancelled search's tokens are not counted: its usage is never known);
what is in flight is read when scraped.

Names, all prefixed ``reason_``: ``requests_total{route,code}``,
``request_duration_seconds{route}``, ``time_to_first_token_seconds`` (streams: the first
content delta), ``searches_total{search,outcome}`` (outcome: done | error | cancelled),
``prompt_tokens_total``, ``encoded_prompt_tokens_total`` (the prompt tokens the engine had
to encode: the rest came from its prefix cache), ``completion_tokens_total``,
``verifier_calls_total``, and the gauges ``requests_in_flight``, ``searches_running``,
``searches_queued``, ``engine_rows_in_flight``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from reason import Solution

ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"})
"""Routes counted by name; any other path counts as ``other`` (a label per unknown path
would let any client grow the registry without bound)."""

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
"""Searches take seconds to minutes on a CPU, so the buckets reach further than a web
server's defaults."""


class Metrics:
    """The registry and its instruments. ``gauges`` maps a gauge's name to the function
    that reads it at scrape time."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, gauges: dict[str, tuple[str, Callable[[], float]]]) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "reason_requests", "HTTP requests answered, by route and status code", ["route", "code"], registry=r
        )
        self.latency = Histogram(
            "reason_request_duration_seconds",
            "Time to the last byte of a response",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_token = Histogram(
            "reason_time_to_first_token_seconds",
            "Streamed requests: time to the first content delta",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.searches = Counter("reason_searches", "Searches ended, by strategy and outcome", ["search", "outcome"], registry=r)
        self.prompt_tokens = Counter("reason_prompt_tokens", "Prompt tokens of finished searches' model calls", registry=r)
        self.encoded_tokens = Counter(
            "reason_encoded_prompt_tokens", "Prompt tokens the engine encoded (not served by its prefix cache)", registry=r
        )
        self.completion_tokens = Counter("reason_completion_tokens", "Tokens finished searches generated", registry=r)
        self.verifier_calls = Counter("reason_verifier_calls", "Verifier calls of finished searches", registry=r)
        for name, (doc, read) in gauges.items():
            Gauge(f"reason_{name}", doc, registry=r).set_function(read)

    def search_done(self, solution: Solution) -> None:
        usage = solution.usage
        self.searches.labels(solution.config.get("search", "?"), "done").inc()
        self.prompt_tokens.inc(usage.prompt_tokens)
        self.encoded_tokens.inc(usage.encoded_tokens)
        self.completion_tokens.inc(usage.completion_tokens)
        self.verifier_calls.inc(usage.verifier_calls)

    def searches_ended(self, search: str, outcome: str, count: int) -> None:
        """``count`` searches that ended without a solution (error, cancelled)."""
        if count > 0:
            self.searches.labels(search, outcome).inc(count)

    def scrape(self) -> bytes:
        return generate_latest(self.registry)

    def middleware(self, app: Any) -> Callable[..., Any]:
        """An ASGI middleware that counts every HTTP response of ``app``."""

        async def counted(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            route = scope["path"] if scope["path"] in ROUTES else "other"
            start = time.perf_counter()
            status = 500  # what the client sees when the app raises before answering

            async def sending(message: dict[str, Any]) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, sending)
            finally:
                self.requests.labels(route, str(status)).inc()
                self.latency.labels(route).observe(time.perf_counter() - start)

        return counted
