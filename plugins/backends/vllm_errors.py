"""Why the ``vllm`` backend failed, in one line: vLLM's processes are made to write their
errors to a log file of ours (:func:`capture_errors`), and :func:`failure_reason` finds the
root cause there or in the exception."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def capture_errors(error_log: Path, kwargs: dict[str, Any], args_class: Any) -> dict[str, str]:
    """Make vLLM's processes also write their errors to ``error_log``, so that a
    failed start can say why in one line (the engine core and its workers are separate
    processes: their exception only reaches us as "initialization failed"). Leaves a
    user's own vLLM logging configuration alone. Returns environment overrides for
    vLLM versions that read the logging config from the environment only."""
    if os.environ.get("VLLM_LOGGING_CONFIG_PATH") or os.environ.get("VLLM_CONFIGURE_LOGGING", "1") == "0":
        return {}
    try:
        from vllm.logger import DEFAULT_LOGGING_CONFIG
    except ImportError:
        return {}
    config = copy.deepcopy(DEFAULT_LOGGING_CONFIG)
    level = os.environ.get("VLLM_LOGGING_LEVEL", "INFO").upper()
    config["formatters"]["reason_plain"] = {"format": "%(message)s"}
    config["handlers"]["reason_errors"] = {
        "class": "logging.FileHandler",
        "filename": str(error_log),
        "level": "ERROR",
        "formatter": "reason_plain",
    }
    for handler in config["handlers"].values():
        if handler.get("class") == "logging.StreamHandler":
            handler["level"] = level
            handler["stream"] = os.environ.get("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    config["loggers"]["vllm"]["handlers"] = [*config["loggers"]["vllm"]["handlers"], "reason_errors"]
    config["loggers"]["vllm"]["level"] = level
    path = error_log.with_suffix(".json")
    path.write_text(json.dumps(config))
    if "logging_config" in {f.name for f in dataclasses.fields(args_class)}:
        from vllm.config.logging import LoggingConfig

        kwargs["logging_config"] = LoggingConfig(pylogging_config_file=str(path))
        return {}
    return {"VLLM_LOGGING_CONFIG_PATH": str(path)}


def read_error_log(error_log: Path | None) -> str:
    try:
        return error_log.read_text(errors="replace") if error_log else ""
    except OSError:
        return ""


def error_log_path() -> Path:
    fd, name = tempfile.mkstemp(prefix="reason-vllm-", suffix=".log")
    os.close(fd)
    return Path(name)


class environ:
    """Set environment variables for the duration of a ``with`` block (for child processes
    vLLM spawns meanwhile)."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        for key, value in self.values.items():
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value

    def __exit__(self, *exc: object) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def is_engine_dead(exc: BaseException) -> bool:
    return any(type(e).__name__ == "EngineDeadError" for e in _chain(exc))


_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception)): (\S.*)$")
_GENERIC = (
    "initialization failed",
    "failed to start",
    "See root cause above",
    "See stack trace for root cause",
    "EngineCore encountered an issue",
    "engine dead",
)


def failure_reason(exc: BaseException, error_log: str = "") -> str:
    """The one line that says why vLLM failed.

    vLLM's engine core and workers are separate processes: an error there reaches us only
    as "Engine core initialization failed. See root cause above." The root cause is the
    first specific exception line in their error log; an error raised in this process
    (e.g. a bad model directory, found while building the config) speaks for itself."""
    own = one_line(exc)
    if not _is_generic(own):
        return own
    for line in error_log.splitlines():
        match = _EXCEPTION_LINE.match(line.strip())
        if match and not _is_generic(match.group(2)):
            return f"{match.group(1)}: {match.group(2)}"
    return f"{own} (vLLM's log above has the details)"


def _is_generic(message: str) -> bool:
    return any(g.lower() in message.lower() for g in _GENERIC)


def one_line(exc: BaseException) -> str:
    """An exception as one informative line (pydantic's multi-line validation errors
    included: vLLM validates its config with pydantic)."""
    for error in _chain(exc):
        errors = getattr(error, "errors", None)
        if callable(errors):
            try:
                first = errors()[0]
                message = str(first.get("msg", ""))
                message = re.sub(r"^Value error, ", "", message)
                if message:
                    return _squeeze(message)
            except Exception:
                pass
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return _squeeze(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _squeeze(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen
