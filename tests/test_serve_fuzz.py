"""`reason serve` fuzzed from its own OpenAPI schema (schemathesis): whatever a client
sends that the schema allows, or nearly allows, the server answers without a 5xx, without
hanging, and still serves a plain request afterwards.

On the scripted backend, in-process, on a bounded budget (a fixed number of examples per
operation, derandomized so a failure reproduces)."""

from __future__ import annotations

import pytest
from scripted import ScriptedBackend

from reason import Config

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402  (installed with schemathesis)
from starlette.testclient import TestClient  # noqa: E402

from reason.plugins.serve.app import create_app  # noqa: E402
from reason.plugins.serve.limits import Limits  # noqa: E402

# Small caps keep every fuzzed search cheap; a deadline bounds anything that is not
APP = create_app(Config(search="best-of-n", n=2, max_tokens=16), backend=ScriptedBackend(), served_model_name="toy",
                 limits=Limits(choices=4, width=4, tokens=64, deadline=20))
CLIENT = TestClient(APP).__enter__()  # the app's startup runs once for the module; closed below
# The schema only: requests go through CLIENT, whose app started once (schemathesis's own
# ASGI calls would run the app's startup and shutdown around every request)
schema = schemathesis.openapi.from_dict(APP.openapi())


def teardown_module() -> None:
    CLIENT.__exit__(None, None, None)


@schema.parametrize()
@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_5xx(case):
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    if isinstance(kwargs.get("data"), (bytes, str)):  # requests' raw body is httpx's content
        kwargs["content"] = kwargs.pop("data")
    response = CLIENT.request(**{k: v for k, v in kwargs.items() if k in ("method", "url", "params", "headers", "json", "content", "data")})
    assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])


def test_the_server_serves_after_the_fuzzing():
    from prometheus_client.parser import text_string_to_metric_families

    page = CLIENT.get("/metrics").text
    answered = {(s.labels["route"], s.labels["code"]): s.value for f in text_string_to_metric_families(page)
                for s in f.samples if s.name == "reason_requests_total"}  # fmt: skip
    # the fuzzer reached both search endpoints many times (nearly all its bodies are refused
    # with a 400 naming a field: random model names, stop strings, unknown reason keys)
    for route in ("/v1/chat/completions", "/v1/completions"):
        assert sum(v for (r, _), v in answered.items() if r == route) >= 20, answered
    assert not [key for key in answered if key[1].startswith("5")], answered
    health = CLIENT.get("/health")
    assert health.status_code == 200 and health.json()["searches_in_flight"] == 0, health.text
    r = CLIENT.post("/v1/chat/completions", json={"model": "toy", "messages": [{"role": "user", "content": "2+2?"}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
