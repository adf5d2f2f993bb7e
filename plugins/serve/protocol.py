"""The wire format of ``reason serve``: OpenAI's request bodies, response objects,
stream chunks and error JSON, plus reason's documented extension fields.

Requests are pydantic models (FastAPI validates them and ``/docs`` shows them); fields
OpenAI defines but a search cannot honour are refused with a 400 naming the field
rather than silently ignored. Responses are built as plain dicts (one per chunk, so the
stream stays cheap) by the functions below.

Extensions, all under the key ``reason`` so that ordinary clients ignore them:

- request ``reason``: ``{"search": "beam", "n": 8, "verifier": ..., ...}`` (any
  :class:`~reason.Config` field except the server's backend and model, plus ``kind``
  and ``progress``; see :mod:`reason.plugins.serve.selection`).
- ``choices[i].reason`` in a response: the chosen answer, its score, every candidate
  with its score, the search's own usage and time.
- ``reason`` on a stream chunk: one progress event of the search behind choice
  ``choices[0].index`` (the chunk's delta is empty).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_CHOICES = 64
"""Upper bound on a request's ``n`` (independent searches per request)."""


class APIError(Exception):
    """An error answered as OpenAI's error JSON with an HTTP status."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.headers = headers or {}
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# -- requests ------------------------------------------------------------------------


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class _Common(BaseModel):
    """Fields both endpoints share. Unknown fields are accepted and ignored, as vLLM does."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, description="MODEL, STRATEGY/MODEL, or STRATEGY (see /v1/models).")
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="Independent searches, one choice each.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, description="Token budget of one solution path.")
    seed: int | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    reason: dict[str, Any] | None = Field(
        None, description='reason-runtime extension, e.g. {"search": "beam", "n": 8, "verifier": "confidence"}.'
    )

    def unsupported(self) -> list[tuple[str, str]]:
        """(field, why) for every field set to something a search cannot honour."""
        out = []
        if self.stop:
            out.append(("stop", "stop strings are not supported: the search decides where paths end"))
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                out.append((name, f"{name} is not supported"))
        return out


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def unsupported(self) -> list[tuple[str, str]]:
        out = super().unsupported()
        if self.tools:
            out.append(("tools", "tools are not supported by reason serve"))
        if self.response_format and self.response_format.get("type", "text") != "text":
            out.append(("response_format", "only response_format type 'text' is supported"))
        if self.logprobs:
            out.append(("logprobs", "logprobs are not returned: an answer comes from a search, not one sample"))
        return out


class CompletionRequest(_Common):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None

    def unsupported(self) -> list[tuple[str, str]]:
        out = super().unsupported()
        if self.echo:
            out.append(("echo", "echo is not supported"))
        if self.suffix:
            out.append(("suffix", "suffix (insertion) is not supported"))
        if self.best_of not in (None, 1):
            out.append(("best_of", 'use {"reason": {"search": "best-of-n", "n": K}} for best-of-K'))
        if self.logprobs:
            out.append(("logprobs", "logprobs are not returned: an answer comes from a search, not one sample"))
        return out


# -- responses -----------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage_dict(prompt_tokens: int, completion_tokens: int, answer_tokens: int) -> dict[str, Any]:
    """OpenAI usage. ``completion_tokens`` is every token the search generated (all
    samples, all steps); ``reasoning_tokens`` is the part of it that is not the chosen
    answer's path, as OpenAI counts a reasoning model's hidden thinking."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens_details": {"reasoning_tokens": max(0, completion_tokens - answer_tokens)},
    }


def error_chunk(error: APIError) -> dict[str, Any]:
    """What a stream sends when the search fails after the response started (the
    ``openai`` client raises it as an APIError)."""
    return error.to_dict()
