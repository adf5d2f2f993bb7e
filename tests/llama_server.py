"""Servers for the ``openai`` backend's tests, all on 127.0.0.1.

- :class:`LlamaServer`: the real llama.cpp server (``python -m llama_cpp.server`` from
  ``llama-cpp-python[server]``) serving the embedded SmolLM2 GGUF on a free port.
- :class:`FakeServer`: a tiny scripted OpenAI-compatible server for the faults a real
  server will not produce on demand (slowness, 429, 5xx, ignoring ``n``). It answers a
  bounded number of requests and stops with the test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def embedded_gguf() -> str:
    from reason.plugins.backends.models import resolve_model

    return resolve_model("smollm2").path


def have_llama_server() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("llama_cpp.server") is not None


class LlamaServer:
    """``python -m llama_cpp.server`` on 127.0.0.1:PORT with the embedded GGUF.

    ``start()`` waits until ``/v1/models`` answers (or the process dies, with its log in
    the error); ``stop()`` terminates it, then kills it if it lingers.
    """

    def __init__(self, model: str | None = None, n_ctx: int = 2048, threads: int = 2) -> None:
        self.model = model or embedded_gguf()
        self.port = free_port()
        self.n_ctx = n_ctx
        self.threads = threads
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, wait: float = 180.0) -> LlamaServer:
        cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", self.model,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.threads),
            "--n_threads_batch", str(self.threads),
            "--verbose", "False",
        ]
        self.process = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ})
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {self.process.returncode}:\n{self.read_log()}")
            try:
                if httpx.get(self.base_url + "/models", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"llama.cpp server did not answer within {wait:.0f}s:\n{self.read_log()}")

    def read_log(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """Kill the server abruptly (the fault tests' 'server died')."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


# -- fake server ---------------------------------------------------------------------------

Behaviour = Callable[[dict[str, Any]], tuple[int, dict[str, Any], float]]
"""Given the request body: (status, JSON body, seconds to wait before answering)."""


def completion_body(text: str = "Hello.", n: int = 1, finish: str = "stop", **choice: Any) -> dict[str, Any]:
    """A vLLM-shaped completion response with ``n`` identical choices."""
    tokens = [text] if text else []
    return {
        "id": "cmpl-fake",
        "object": "text_completion",
        "model": "fake",
        "choices": [
            {
                "index": i,
                "text": text,
                "finish_reason": finish,
                "token_ids": [7] * len(tokens),
                "logprobs": {
                    "tokens": tokens,
                    "token_logprobs": [-0.25] * len(tokens),
                    "top_logprobs": [{text: -0.25, "x": -2.0, "y": -3.0} for _ in tokens],
                    "text_offset": [0] * len(tokens),
                },
                **({"stop_reason": None} if "stop_reason" not in choice else {}),
                **choice,
            }
            for i in range(n)
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": len(tokens) * n, "total_tokens": 5 + len(tokens) * n},
    }


def ok(text: str = "Hello.", honour_n: bool = True, **choice: Any) -> Behaviour:
    def behave(body: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
        return 200, completion_body(text, body.get("n", 1) if honour_n else 1, **choice), 0.0

    return behave


def status(code: int, message: str = "busy") -> Behaviour:
    return lambda body: (code, {"error": {"message": message, "code": code}}, 0.0)


def slow(seconds: float, then: Behaviour | None = None) -> Behaviour:
    def behave(body: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
        code, payload, _ = (then or ok())(body)
        return code, payload, seconds

    return behave


class FakeServer:
    """A scripted OpenAI-compatible server on 127.0.0.1 (a thread; stops with ``close``).

    ``script`` is consumed one behaviour per ``POST /v1/completions``; when it runs out,
    ``default`` answers. Every request body is kept in ``requests`` (and headers in
    ``headers``) so tests can check what the backend sent. ``in_flight`` /
    ``max_in_flight`` count requests being worked on; a client that hangs up while its
    request waits is noticed at once and counted in ``hangups``.
    """

    def __init__(self, script: list[Behaviour] | None = None, default: Behaviour | None = None,
                 models: list[str] | None = None, max_requests: int = 200, owned_by: str = "fake") -> None:
        self.script = list(script or [])
        self.default = default or ok()
        self.models = ["fake"] if models is None else models
        self.owned_by = owned_by
        self.max_requests = max_requests
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.hangups = 0
        """Requests whose client closed the connection before the answer (then dropped)."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if code == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": server.owned_by} for m in server.models]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    if len(server.requests) > server.max_requests:
                        behaviour: Behaviour = status(500, "fake server: request limit reached")
                    else:
                        behaviour = server.script.pop(0) if server.script else server.default
                if self.path.rstrip("/") != "/v1/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                code, payload, delay = behaviour(body)
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    stayed = self._wait_unless_hung_up(delay)
                finally:
                    # Before the answer is written: once the client has it, it may send
                    # its next request, which must not count this one as still running.
                    with server._lock:
                        server.in_flight -= 1
                if not stayed:  # like a real server: a request whose client left is dropped
                    with server._lock:
                        server.hangups += 1
                    self.close_connection = True
                    return
                try:
                    self._send(code, payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _wait_unless_hung_up(self, delay: float) -> bool:
                """Wait ``delay`` seconds (less if the server stops); False as soon as the
                client closes the connection (a timeout or a cancelled request)."""
                deadline = time.monotonic() + delay
                while not server._stop.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return True
                    readable, _, _ = select.select([self.connection], [], [], min(left, 0.02))
                    if readable:
                        try:
                            if self.connection.recv(1, socket.MSG_PEEK) == b"":
                                return False
                        except OSError:
                            return False
                        time.sleep(min(left, 0.02))  # unexpected bytes: keep waiting, don't spin
                return True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
