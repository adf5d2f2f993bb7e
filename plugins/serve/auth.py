"""API keys in front of ``reason serve``: OpenAI's bearer scheme, every route but /health.

A plain ASGI middleware, so it guards every route the app has, FastAPI's own ``/docs``
and ``/openapi.json`` included, and a new route cannot be added unguarded. Keys are
compared in constant time, against every key each time (no early exit that would tell
which key matched).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from typing import Any

OPEN_PATHS = frozenset({"/health"})
"""Routes that answer without a key: liveness is for load balancers and orchestrators."""


def bearer(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (None: no such header)."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return None


class APIKeys:
    """Refuse a request whose bearer token is not one of ``keys`` with OpenAI's 401."""

    def __init__(self, app: Any, keys: Sequence[str]) -> None:
        if not keys or any(not k for k in keys):
            raise ValueError("an API key must not be empty")
        self.app = app
        self.keys = [k.encode() for k in keys]

    def valid(self, token: bytes) -> bool:
        ok = False
        for key in self.keys:
            ok |= hmac.compare_digest(key, token)
        return ok

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        token = bearer(scope["headers"])
        if token is not None and self.valid(token):
            await self.app(scope, receive, send)
            return
        if token is None:
            message = (
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        else:
            message = "Incorrect API key provided. The server's keys are set by reason serve --require-api-key."
        body = json.dumps(
            {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="reason serve"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
