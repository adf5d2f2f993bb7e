"""The ``openai`` backend: any OpenAI-compatible server (``vllm serve``, SGLang, llama.cpp).

This is how a user reaches a multi-GPU or multi-node deployment: the server does the
batching and prefix caching. The backend is *continuous* (``generate_async``): each
request goes to the server the moment a search makes it and resolves when its own
completions are back, so the server's batch stays full while searches wait.

- Prompts: the chat template is applied *here*, with the model's tokenizer
  (``--tokenizer DIR|ID``, else the served model's name when it loads as a tokenizer),
  and every request goes to ``/v1/completions`` as a raw continuation of the prompt
  text, so a search can continue a partial reasoning path.
- Stop strings: our contract is that ``Completion.text`` ends with the matched stop string
  and ``finish_reason`` is ``stop``; a server ``stop`` without a matched stop string is
  ``eos``. vLLM is asked to keep the string (``include_stop_str_in_output``) and tells
  which one matched (``stop_reason``); SGLang says ``matched_stop``; llama.cpp's native
  server says ``stopping_word``. For servers that say nothing (llama-cpp-python), the
  text the logprob tokens cover beyond the returned text shows the stop string.
- Token ids: from the server when it gives them (vLLM ``return_token_ids`` /
  ``return_tokens_as_token_ids``); otherwise each logprob token's text is mapped back to
  an id with the tokenizer (the id whose text it is; -1 for a piece no single id gives).
- HTTP: one ``httpx.AsyncClient`` on the backend's own event-loop thread (the client is
  bound to one loop; callers come from the runtime's loop and from plain threads), at
  most ``max_concurrency`` requests in flight from all callers together; cancelling a
  ``generate_async`` await drops its HTTP request. The blocking ``generate(requests)``
  sends its whole batch through the same loop. Retries with exponential backoff on
  timeouts, connection errors, 429 and 5xx (honouring ``Retry-After``); ``n`` is sent as
  is (greedy samples are asked for once: they are one text, and vLLM refuses ``n > 1``
  with greedy sampling), and a server that returns fewer choices than asked (it ignores
  ``n``) gets one request per sample from then on, sample ``j`` with ``seed + j``.

Settings: ``config.model`` (server model name; default the first of ``/v1/models``) and
options ``base_url`` (``$OPENAI_BASE_URL``, default ``http://127.0.0.1:8000/v1``),
``api_key`` (``$OPENAI_API_KEY``), ``tokenizer``, ``timeout`` (seconds, 300),
``max_concurrency`` (16), ``max_retries`` (3), ``retry_backoff`` (seconds, 0.5; doubled
on each retry).

This module holds the backend class (connection, retries, tokenizer, generation); the
request body and response parsing are in :mod:`.openai_payload`, its event-loop thread
in :mod:`.openai_io`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import threading
import weakref
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs

import reason
from reason.aio import gather_all
from reason.components import Backend
from reason.errors import BackendError, UsageError
from reason.log import get_logger
from reason.options import Option
from reason.types import Completion, GenerateRequest

from .openai_io import HTTPLoop, shutdown
from .openai_payload import LLAMA_CPP_PYTHON_NEUTRAL, completion_payload, error_text, mentions_extras, parse_choice, retry_after

log = get_logger()
T = TypeVar("T")

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
START_HINT = "start one (e.g. `vllm serve MODEL` or `python -m llama_cpp.server --model FILE.gguf`) or point --base-url at it"


class _Retryable(Exception):
    """A failure worth another try (timeout, lost connection, 429, 5xx)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def normalize_base_url(url: str) -> str:
    """``http://host:8000`` -> ``http://host:8000/v1``; trailing slashes dropped."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--base-url {url!r} is not an http(s) URL; e.g. --base-url http://127.0.0.1:8000/v1")
    url = url.rstrip("/")
    if parts.path in ("", "/"):
        url += "/v1"
    return url


class OpenAIBackend(Backend):
    """Policy backend on an OpenAI-compatible ``/v1/completions`` endpoint."""

    class Options(reason.Options):
        base_url = Option(str, None, help=f"the server, e.g. http://127.0.0.1:8000/v1 [$OPENAI_BASE_URL, {DEFAULT_BASE_URL}]")
        api_key = Option(str, None, help="the server's API key [$OPENAI_API_KEY]")
        tokenizer = Option(str, None, help="tokenizer (HF dir or id) for the chat template [the server's]")
        timeout = Option(float, 300.0, minimum=0.001, help="seconds one HTTP request may take")
        max_concurrency = Option(int, 16, minimum=1, help="HTTP requests in flight, from all callers together")
        max_retries = Option(int, 3, minimum=0, help="retries on timeouts, 429 and 5xx")
        retry_backoff = Option(float, 0.5, minimum=0, help="seconds before the first retry (doubling)")

    options: Options
    continuous = True

    def __init__(self, config: Any, arg: str | None = None, **kwargs: Any) -> None:
        super().__init__(config, arg, **kwargs)
        self.base_url = normalize_base_url(str(self.options.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL))
        self.api_key = self.options.api_key or os.environ.get("OPENAI_API_KEY") or None
        self.tokenizer_spec = self.options.tokenizer
        self.timeout = self.options.timeout
        self.max_concurrency = self.options.max_concurrency
        self.max_retries = self.options.max_retries
        self.backoff = self.options.retry_backoff
        self._model: str | None = arg or config.model or None
        self._served: list[str] | None = None
        self._owners: dict[str, str] = {}
        self._io: HTTPLoop | None = None
        self._io_lock = threading.Lock()
        """Guards starting and closing the loop thread (a submit waits for a close)."""
        self._tokenizer: Any = None
        self._token_ids: dict[str, int] | None = None
        self._lock = threading.RLock()
        self._ready = False
        self.supports_n = True
        """False once the server answered a request for n samples with fewer choices."""
        self.send_extras = True
        """False once the server rejected vLLM's extra parameters."""
        self.http_requests = 0
        self.retries = 0

    # -- the loop thread ----------------------------------------------------------------

    def _submit(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> concurrent.futures.Future[T]:
        """Run ``fn(*args)`` on the backend's loop (started on first use)."""
        with self._io_lock:
            if self._io is None:
                self._io = HTTPLoop(self.max_concurrency)
                # A backend dropped without close() must not leave its thread behind.
                weakref.finalize(self, self._io.stop, 5.0)
            io = self._io
            return io.submit(self._tracked(io, fn(*args)))

    def _call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run ``fn(*args)`` on the backend's loop and wait for it (from any other thread)."""
        io = self._io
        if io is not None and io.is_current:
            raise RuntimeError("OpenAIBackend: a blocking call on the backend's own loop thread would deadlock")
        future = self._submit(fn, *args)
        try:
            return future.result()
        except BaseException:  # e.g. KeyboardInterrupt while waiting: drop the requests
            future.cancel()
            raise

    async def _tracked(self, io: HTTPLoop, coro: Coroutine[Any, Any, T]) -> T:
        task = asyncio.current_task()
        assert task is not None
        io.tasks.add(task)
        try:
            return await coro
        except asyncio.CancelledError:
            if io.closing:  # close() cancelled it: the caller gets a reason, not a bare cancel
                raise BackendError(f"the openai backend for {self.base_url} was closed while a request was in flight") from None
            raise
        finally:
            io.tasks.discard(task)

    def _http(self) -> Any:
        """The loop's ``httpx.AsyncClient`` (created on the loop, on first use)."""
        io = self._io
        assert io is not None
        if io.client is None:
            import httpx

            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            io.client = httpx.AsyncClient(
                base_url=self.base_url,
                headers=headers,
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                limits=httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency),
            )
        return io.client

    # -- connection -------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self._model or ""

    @property
    def is_llama_cpp_python(self) -> bool:
        return self._owners.get(self._model or "") == "me"

    def _ensure_ready(self) -> None:
        """Check the server answers and serves the model (once); pick the model when the
        user named none."""
        if not self._ready:
            self._call(self._ready_async)

    async def _ready_async(self) -> None:
        if self._ready:
            return
        assert self._io is not None
        async with self._io.ready_lock:
            if self._ready:
                return
            served = await self._served_models_async()
            if self._model is None:
                if not served:
                    raise BackendError(f"the server at {self.base_url} lists no model on /v1/models; pass --model NAME")
                self._model = served[0]
            elif served is not None and self._model not in served:
                raise BackendError(
                    f"the server at {self.base_url} does not serve model {self._model!r}; it serves: "
                    f"{', '.join(served) or 'nothing'} (pass one of these as --model, or leave --model out)"
                )
            self._ready = True
            log.debug("openai backend ready", base_url=self.base_url, model=self._model)

    def served_models(self) -> list[str] | None:
        """The model ids on ``/v1/models`` (``None`` when the server has no such route)."""
        if self._served is None:
            return self._call(self._served_models_async)
        return self._served

    async def _served_models_async(self) -> list[str] | None:
        if self._served is None:
            response = await self._request("GET", "/models")
            if response.status_code == 404:
                return None
            self._check_status(response, "/models")
            data = response.json().get("data") or []
            items = [item for item in data if isinstance(item, dict) and item.get("id")]
            self._owners = {str(item["id"]): str(item.get("owned_by") or "") for item in items}
            self._served = [str(item["id"]) for item in items]
        return self._served

    async def _request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        """One HTTP call with retries; returns the final response (any status that is not
        retryable) or raises :class:`BackendError` when the retries are spent."""
        import httpx

        assert self._io is not None
        attempt = 0
        while True:
            try:
                # The slot is held for the attempt only, not for the backoff sleep.
                async with self._io.slots:
                    self.http_requests += 1
                    try:
                        response = await self._http().request(method, path, json=payload)
                    except httpx.TimeoutException as exc:
                        raise _Retryable(f"no answer within {self.timeout:g}s ({type(exc).__name__})") from exc
                    except httpx.TransportError as exc:
                        raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
                if response.status_code in RETRY_STATUS:
                    raise _Retryable(f"HTTP {response.status_code}: {error_text(response)}", retry_after(response))
                return response
            except _Retryable as exc:
                if attempt >= self.max_retries:
                    raise BackendError(
                        f"the OpenAI-compatible server at {self.base_url} failed on {method} {path} after "
                        f"{attempt + 1} attempt(s): {exc}. Is it running and reachable? {START_HINT}; "
                        "a slow server may need a larger -o timeout=SECONDS"
                    ) from None
                delay = exc.retry_after if exc.retry_after is not None else self.backoff * (2**attempt)
                delay = min(delay, 30.0) * (1 + 0.1 * random.random())
                attempt += 1
                self.retries += 1
                log.warning(
                    "openai request failed, retrying",
                    url=self.base_url + path,
                    error=str(exc),
                    attempt=attempt,
                    delay=round(delay, 2),
                )
                await asyncio.sleep(delay)

    def _check_status(self, response: Any, path: str) -> None:
        if response.status_code < 400:
            return
        text = error_text(response)
        if response.status_code in (401, 403):
            raise BackendError(
                f"the server at {self.base_url} refused the request (HTTP {response.status_code}: {text}); "
                "pass the right key with --api-key or OPENAI_API_KEY"
            )
        if response.status_code == 404 and "model" in text.lower():
            served = self._served or []
            raise BackendError(
                f"the server at {self.base_url} does not know model {self._model!r} ({text}); "
                f"it serves: {', '.join(served) or 'see /v1/models'}"
            )
        if response.status_code == 404:
            raise BackendError(
                f"{self.base_url}{path} does not exist (HTTP 404): is --base-url the server's OpenAI API root "
                "(usually ending in /v1)?"
            )
        raise BackendError(f"the server at {self.base_url} answered {path} with HTTP {response.status_code}: {text}")

    # -- tokenizer ----------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (its chat template shapes every prompt): ``-o tokenizer=...``
        (``--tokenizer``), else the served model's name when it loads as one (a hub id, a
        local directory or ``.gguf`` file: what ``vllm serve`` and llama.cpp list)."""
        with self._lock:
            if self._tokenizer is None:
                from reason.plugins.backends.models import load_tokenizer

                spec = self.tokenizer_spec
                if not spec:
                    self._ensure_ready()
                    spec = self._model
                try:
                    self._tokenizer = load_tokenizer(str(spec))
                except Exception as exc:
                    origin = "--tokenizer" if self.tokenizer_spec else f"the served model's name {spec!r}"
                    raise UsageError(
                        f"backend openai: could not load a tokenizer from {origin} ({exc}); pass --tokenizer "
                        "with the served model's HF directory or hub id (or 'smollm2' for the embedded model): "
                        "its chat template formats every prompt"
                    ) from exc
            return self._tokenizer

    def token_id(self, piece: str) -> int:
        """The id of one token given as its text (what OpenAI logprobs carry): exact when
        the text decodes from one token id, else the text's sole id, else -1."""
        with self._lock:
            if self._token_ids is None:
                tok = self.tokenizer
                table: dict[str, int] = {}
                for index in range(len(tok)):
                    table.setdefault(tok.decode([index]), index)
                self._token_ids = table
        found = self._token_ids.get(piece)
        if found is not None:
            return found
        ids = self.tokenizer.encode(piece, add_special_tokens=False)
        return int(ids[0]) if len(ids) == 1 else -1

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    # -- Backend ------------------------------------------------------------------------

    def load(self) -> None:
        self._ensure_ready()

    def format_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
        """All requests at once (up to ``max_concurrency`` HTTP requests in flight); blocks
        until every one is done. The first failure cancels the rest and is raised."""
        if not requests:
            return []
        return self._call(self._generate_all, list(requests))

    async def generate_async(
        self, request: GenerateRequest, *, on_text: Callable[[int, str], None] | None = None
    ) -> list[Completion]:
        """One request, resolved as soon as its own completions are back, whatever else is
        in flight. Cancelling the await cancels its HTTP request(s)."""
        # wrap_future: cancelling this await cancels the concurrent future, which cancels
        # the task on the backend's loop, which drops the HTTP connection.
        return await asyncio.wrap_future(self._submit(self._generate_one, request))

    async def _generate_all(self, requests: list[GenerateRequest]) -> list[list[Completion]]:
        return await gather_all(*(self._generate_one(r) for r in requests))

    async def _generate_one(self, request: GenerateRequest) -> list[Completion]:
        if request.params.temperature == 0 and request.n > 1:
            # Greedy samples are one text n times, and vLLM's server refuses n > 1 with
            # greedy sampling: ask once.
            (one,) = await self._generate_one(attrs.evolve(request, n=1))
            return [one] * request.n
        await self._ready_async()
        completions: list[Completion] = []
        if self.supports_n:
            completions = await self._complete(request, request.n, 0)
            if len(completions) >= request.n:
                return completions[: request.n]
            if not completions:
                raise BackendError(f"the server at {self.base_url} returned no choice for a completion request")
            if self.supports_n:
                log.info("server ignores n; sending one request per sample", base_url=self.base_url)
            self.supports_n = False
        # One request per missing sample; sample j gets seed + j so seeded samples differ.
        singles = await gather_all(*(self._complete(request, 1, j) for j in range(len(completions), request.n)))
        for got in singles:
            if not got:
                raise BackendError(f"the server at {self.base_url} returned no choice for a completion request")
            completions.append(got[0])
        return completions

    def payload(self, request: GenerateRequest, n: int, seed_offset: int = 0) -> dict[str, Any]:
        """The exact body this backend POSTs for ``n`` samples of ``request``."""
        # Prompts from format_prompt loaded the tokenizer; a raw prompt is sent as it is.
        bos = getattr(self._tokenizer, "bos_token", None)
        payload = completion_payload(self._model or "", request, n, seed_offset, self.send_extras, bos)
        if self.is_llama_cpp_python:
            payload.update(LLAMA_CPP_PYTHON_NEUTRAL)
        return payload

    async def _complete(self, request: GenerateRequest, n: int, seed_offset: int) -> list[Completion]:
        """POST one completion request for ``n`` samples; parse its choices."""
        payload = self.payload(request, n, seed_offset)
        response = await self._request("POST", "/completions", payload)
        if response.status_code in (400, 422) and self.send_extras and mentions_extras(response):
            log.info("server rejects vLLM's extra parameters; sending plain OpenAI requests", base_url=self.base_url)
            self.send_extras = False
            payload = self.payload(request, n, seed_offset)
            response = await self._request("POST", "/completions", payload)
        self._check_status(response, "/completions")
        try:
            body = response.json()
            choices = sorted(body["choices"], key=lambda c: c.get("index", 0))
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(f"the server at {self.base_url} sent an unreadable completion: {exc}") from exc
        # Off the loop: the first parse may load the tokenizer and build its id table
        # (seconds), which would stall every other request's I/O.
        return await asyncio.to_thread(self._parse, request, body, choices[:n])

    def _parse(self, request: GenerateRequest, body: dict[str, Any], choices: list[Any]) -> list[Completion]:
        usage = body.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens")
        if not isinstance(prompt_tokens, int):
            prompt_tokens = self.count_tokens(request.prompt)
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        completions = [parse_choice(choice, request.params, prompt_tokens, self) for choice in choices]
        if isinstance(cached, int):  # the request's count: its other choices share its prompt pass
            completions = [attrs.evolve(c, cached_tokens=cached if i == 0 else prompt_tokens) for i, c in enumerate(completions)]
        return completions

    def close(self) -> None:
        """Cancel what is in flight (its callers get a :class:`BackendError`), close the
        HTTP client and stop the loop thread. The backend starts a new one if used again."""
        with self._io_lock:
            io, self._io = self._io, None
            if io is None:
                return
            if io.is_current:
                raise RuntimeError("OpenAIBackend.close() cannot run on the backend's own loop thread")
            io.closing = True
            try:
                io.submit(shutdown(io)).result(timeout=30)
            except Exception as exc:  # a client that fails to close is not worth a crash at exit
                log.debug("openai backend: shutdown incomplete", error=str(exc))
            io.stop(timeout=10.0)
