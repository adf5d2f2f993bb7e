"""`reason serve` when its engine fails: the requests it held fail with one clear 503,
nothing hangs, /health says so, the engine is rebuilt where it cannot go on, and the
next requests succeed.

Three levels: a scripted backend that dies and heals on a signal (exact states); the
real transformers decode loop, broken for one step and then killed outright; and the
real vLLM engine core process killed with SIGKILL under a streaming request.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from scripted import ScriptedBackend
from serve_process import serving

from reason import BackendError, Config


def chat(client, **body):
    body.setdefault("model", "toy")
    body.setdefault("messages", [{"role": "user", "content": "What is 2 + 2?"}])
    return client.post("/v1/chat/completions", json=body)


def healthy_within(get, seconds: float) -> dict:
    deadline = time.time() + seconds
    while True:
        r = get("/health")
        if r.status_code == 200:
            return r.json()
        assert time.time() < deadline, f"still unhealthy: {r.json()}"
        time.sleep(0.1)


class Dying(ScriptedBackend):
    """Dies when told (every call fails, ``failure`` says why); a new load waits for the
    test's signal, then heals."""

    def __init__(self):
        super().__init__()
        self.dead = False
        self.may_load = threading.Event()
        self.may_load.set()

    @property
    def failure(self):
        return "the engine process died (simulated)" if self.dead else None

    def generate(self, requests):
        if self.dead:
            raise BackendError("backend toy: generate failed: engine dead (simulated)")
        return super().generate(requests)

    def load(self):
        assert self.may_load.wait(30)
        self.dead = False


def test_a_dead_engine_fails_its_requests_with_503_is_rebuilt_and_serves_again():
    from starlette.testclient import TestClient

    from reason.plugins.serve.app import create_app

    backend = Dying()
    with TestClient(create_app(Config(search="best-of-n", n=2), backend=backend, served_model_name="toy")) as c:
        assert chat(c).status_code == 200
        backend.dead, _ = True, backend.may_load.clear()
        failed = chat(c)
        assert failed.status_code == 503 and failed.json()["error"]["code"] == "engine_error", failed.text
        health = c.get("/health")  # the rebuild waits for may_load: unhealthy meanwhile
        assert health.status_code == 503 and health.json()["status"] == "unhealthy"
        assert "simulated" in health.json()["fault"]
        during = chat(c)
        assert during.status_code == 503 and during.json()["error"]["code"] == "engine_unavailable"
        assert int(during.headers["retry-after"]) >= 1
        backend.may_load.set()
        report = healthy_within(c.get, 10)
        assert report["engine_rebuilds"] == 1 and report["fault"] is None
        assert chat(c).status_code == 200


# -- the real transformers decode loop ---------------------------------------------------

LONG = [{"role": "user", "content": "Write a very long story about a dragon and a knight, at least 2000 words."}]


@pytest.fixture
def embedded():
    """The app in-process on the real embedded model (greedy), and its server object."""
    from starlette.testclient import TestClient

    from reason.plugins.serve.app import create_app

    app = create_app(Config(backend="transformers", model="smollm2", search="greedy", max_tokens=8, options={"threads": 1}))
    with TestClient(app) as client:
        yield client, app.state.server


@pytest.mark.model
def test_model_a_failing_decode_step_is_a_503_and_the_loop_goes_on(embedded):
    client, server = embedded
    backend = server.runtime.backend
    real = backend.loop._decode
    calls = []

    def once(batch, tokens):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated CUDA error")
        return real(batch, tokens)

    backend.loop._decode = once
    failed = chat(client, model=None)
    error = failed.json()["error"]
    assert failed.status_code == 503 and error["code"] == "engine_error" and "simulated CUDA error" in error["message"]
    backend.loop._decode = real
    assert chat(client, model=None).status_code == 200  # the same engine, no rebuild needed
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["engine_rebuilds"] == 0


@pytest.mark.model
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread's end is the point
def test_model_a_dead_decode_loop_fails_what_it_held_and_the_engine_is_rebuilt(embedded):
    """The loop thread itself ends (a BaseException no step handler catches): the request
    in flight fails at once instead of waiting forever, and the server builds a new
    engine; the next request is answered by it."""
    client, server = embedded
    first = server.runtime.backend

    def die(batch):
        raise SystemExit("simulated: the decode loop thread ends")

    first.loop._iterate = die
    start = time.time()
    failed = chat(client, model=None, messages=LONG, max_tokens=200)
    assert failed.status_code == 503 and "decode loop stopped" in failed.json()["error"]["message"], failed.text
    assert time.time() - start < 60
    # known the moment the request failed, not only once the thread is gone: a health check
    # right after the 503 must not find the dead engine "ok"
    assert server.fault is not None or server.rebuilds == 1
    report = healthy_within(client.get, 120)
    assert report["engine_rebuilds"] == 1 and server.runtime.backend is not first
    answer = chat(client, model=None)
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]


# -- the real vLLM engine ----------------------------------------------------------------


def engine_core(group: int) -> int | None:
    """The pid of vLLM's engine core process in process group ``group``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        name, fields = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == group and fields[0] != "Z" and ("EngineCore" in name or "EngineCore" in cmdline):
            return int(stat.parent.name)
    return None


@pytest.mark.vllm
@pytest.mark.model
@pytest.mark.timeout(900)
def test_vllm_engine_killed_mid_stream_503_then_rebuilt_and_answering(tmp_path):
    pytest.importorskip("vllm", reason="make vllm-deps installs vLLM's CPU build")
    memory = "gpu_memory_utilization=0.15"
    args = ["--backend", "vllm", "-o", "max_model_len=1024", "-o", memory, "--search", "greedy", "--max-tokens", "400"]
    with serving(tmp_path / "serve.log", *args) as base:
        group = httpx.get(f"{base}/health", timeout=10).json()["pid"]  # started in a session of its own
        body = {"model": "greedy", "messages": LONG, "stream": True}
        with httpx.Client(timeout=120) as client, client.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()
            for line in lines:  # the first tokens: the engine is mid-request
                if '"content"' in line and '"role"' not in line:
                    break
            core = engine_core(group)
            assert core is not None, "no vLLM engine core process found"
            os.kill(core, signal.SIGKILL)
            killed = time.time()
            rest = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
        assert rest[-1] == "[DONE]" and time.time() - killed < 60
        error = json.loads(rest[-2])["error"]
        assert error["code"] == "engine_error" and error["type"] == "server_error", rest[-2]
        health = httpx.get(f"{base}/health", timeout=10)
        assert health.status_code == 503 or health.json()["engine_rebuilds"] == 1
        report = healthy_within(lambda path: httpx.get(f"{base}{path}", timeout=10), 300)
        assert report["engine_rebuilds"] == 1
        answer = httpx.post(f"{base}/v1/chat/completions", json={"model": "greedy", "messages": [{"role": "user", "content": "2+2?"}],
                                                                 "max_tokens": 8}, timeout=120)
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
