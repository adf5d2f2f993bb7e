"""The ASGI app behind ``reason serve`` (FastAPI on uvicorn; SSE with sse-starlette).

One :class:`~reason.Runtime` lives as long as the app: created and its model loaded at
startup, closed at shutdown. Every request runs its searches on it (``await
rt.asolve(...)``, ``rt.stream(...)``), so concurrent requests share one engine and one
batch. Routes:

- ``POST /v1/chat/completions``, ``POST /v1/completions``: OpenAI's APIs; the strategy
  comes from the server's recipe, the model name (``STRATEGY/MODEL``) or the request's
  ``reason`` extension (see :mod:`.selection`); ``stream=true`` sends SSE chunks.
- ``GET /v1/models``: the served model with every strategy that can be asked for.
- ``GET /health``: liveness plus what is in flight: requests, searches, engine rows
  (the disconnect tests read it), and engine statistics since start.
- ``GET /metrics``: Prometheus metrics (see :mod:`.metrics`).

In front of them: API keys (:mod:`.auth`; every route but /health) and the deployer's
limits (:mod:`.limits`: caps per request, a bounded queue of searches, a deadline).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from reason import Backend, Config

from .auth import APIKeys
from .formats import ChatFormat, CompletionFormat
from .limits import Limits
from .protocol import APIError, ChatCompletionRequest, CompletionRequest
from .selection import question_from_messages
from .server import Server


def create_app(
    config: Config,
    *,
    served_model_name: str | None = None,
    backend: Backend | None = None,
    request_options: bool = False,
    limits: Limits | None = None,
    api_keys: Sequence[str] = (),
    reasoning: bool = True,
) -> FastAPI:
    """The app for ``config`` (the server's defaults). ``backend``: an already-built
    backend to serve (tests); by default the config's is built and loaded at startup.
    ``request_options``: let requests set plugin options (``reason.options``; trusted
    clients only, see :func:`.selection.select`). ``limits``: what a client may ask for
    (:class:`.limits.Limits`). ``api_keys``: the bearer keys a client must present (none:
    the server is open). ``reasoning``: chat answers carry the search's narration and the
    model's thinking in ``reasoning_content`` (a request's ``reason.reasoning`` decides
    for itself)."""
    server = Server(config, served_model_name, backend, request_options, limits, reasoning)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    from reason import __version__

    app = FastAPI(
        title="reason serve",
        version=__version__,
        description="OpenAI-compatible API; every answer comes from a test-time search (reason-runtime).",
        lifespan=lifespan,
    )
    app.state.server = server
    # the last added runs first: count every answer, 401s included
    if api_keys:
        app.add_middleware(APIKeys, keys=list(api_keys))
    app.add_middleware(server.metrics.middleware)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_error(exc.errors()).to_dict(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        error = APIError(f"{exc.detail}: {request.method} {request.url.path}", exc.status_code, type=kind)
        return JSONResponse(error.to_dict(), status_code=exc.status_code)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        question, history, system = question_from_messages(body.messages)
        selection, jobs = server.prepare(body, [question], system, "messages", history)
        reasoning = server.reasoning if selection.reasoning is None else selection.reasoning
        fmt = ChatFormat(body.model or server.served, reasoning=reasoning)
        return await server.respond(request, body, selection, jobs, fmt)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts:
            raise APIError("prompt is empty", param="prompt")
        selection, jobs = server.prepare(body, prompts, None, "prompt")
        return await server.respond(request, body, selection, jobs, CompletionFormat(body.model or server.served))

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return server.models()

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        for model in server.models()["data"]:
            if model["id"] == model_id:
                return model
        raise APIError(f"The model {model_id!r} does not exist", 404, param="model", code="model_not_found")

    @app.get("/health")
    async def health() -> JSONResponse:
        server.check_engine()
        report = server.health()
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.scrape(), media_type=server.metrics.content_type)

    return app


def validation_error(errors: Any) -> APIError:
    """FastAPI's validation errors (malformed JSON included) as one OpenAI-style 400."""
    first = errors[0] if errors else {}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return APIError(f"malformed JSON body: {first.get('msg', 'invalid JSON')}", code="invalid_json")
    param = ".".join(loc) or None
    message = f"{param}: {first.get('msg', 'invalid value')}" if param else first.get("msg", "invalid request body")
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return APIError(message, param=param)
