"""Logging, kept off the start-up path.

structlog (and, through it, rich) costs ~0.2 s to import, which ``reason --help`` must
not pay. The library logs through :func:`get_logger`, which imports structlog on first
use. The library never configures logging; the CLI calls :func:`configure`, which takes
effect when the first logger is made.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

_pending: tuple[str, bool | None] | None = None


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written. Binding the stream object at
    configure time breaks once it is swapped and closed (by a test's capture, a tool
    embedding the CLI), and the next warning, from an engine thread, would raise there."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str = "warning", json_logs: bool | None = None) -> None:
    """(CLI only) structlog to stderr: console format on a TTY, JSON lines otherwise."""
    global _pending
    _pending = (level, json_logs)
    if "structlog" in sys.modules:
        _apply()


def _apply() -> None:
    global _pending
    if _pending is None:
        return
    level, json_logs = _pending
    _pending = None
    import structlog

    if json_logs is None:
        json_logs = not sys.stderr.isatty()
    renderer = structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso"), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "reason") -> Any:
    """The library's logger. Nothing is imported until it logs; each call then goes to
    structlog if anyone configured it (the CLI, or an application using structlog), and
    otherwise to stdlib ``logging.getLogger(name)``: structlog's unconfigured default would
    print every level, debug included, to stdout, which is the embedding application's.
    Through stdlib logging the application's own settings apply (by default: warnings
    and errors on stderr)."""
    return _Logger(name)


class _Logger:
    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, method: str) -> Any:
        import structlog

        _apply()
        if structlog.is_configured():
            return getattr(structlog.get_logger(self.name), method)
        stdlib = structlog.wrap_logger(
            logging.getLogger(self.name),
            processors=[structlog.stdlib.filter_by_level, structlog.processors.KeyValueRenderer(key_order=["event"])],
            wrapper_class=structlog.stdlib.BoundLogger,
        )
        return getattr(stdlib, method)
