"""``reason serve``: an OpenAI-compatible server whose every answer comes from a
test-time search.

Registered like any third-party plugin, through ``reason_register_commands``. This
module imports only click: the ASGI stack (FastAPI, uvicorn, sse-starlette) and the
model load when the command runs. The app is :mod:`reason.plugins.serve.app`; the wire
format and its extensions are documented in :mod:`reason.plugins.serve.protocol`.
"""

from __future__ import annotations

import os
from typing import Any

import click

from reason import hookimpl
from reason.cli import config_from, run_options

EXAMPLES = """
\b
Examples:
  reason serve                                   # embedded model, best-of-n by default
  reason serve --recipe examples/recipes/beam.toml --port 8000
  reason serve --search greedy --max-tokens 256 -o threads=2
  REASON_SERVE_API_KEY=sk-team reason serve --limit-n 4 --limit-width 16 --limit-tokens 1024 --deadline 300
Then, with any OpenAI client (base URL http://127.0.0.1:8000/v1):
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "beam/SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "2+2?"}]}'
"""


@click.command("serve", epilog=EXAMPLES)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--served-model-name", default=None, help="The model name clients use [the model's own name].")
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="One line per request on stderr.")
@click.option(
    "--request-options/--no-request-options",
    default=False,
    show_default=True,
    help="Let requests set plugin options (reason.options), checked like -o against the components each "
    "request runs. Trusted clients only: options that change a verifier build another one (a PRM on another "
    "model, say), kept for the server's life; backend options stay the server's.",
)
@click.option(
    "--require-api-key",
    "api_keys",
    multiple=True,
    help="A key clients must send (Authorization: Bearer KEY); repeat for several. Keys in $REASON_SERVE_API_KEY "
    "(space-separated) count too, so secrets need not be on the command line. Without any the server is open. "
    "/health never asks. (--api-key is the openai backend's key for the server it calls.)",
)
@click.option("--limit-n", type=click.IntRange(1), default=None, help="Most searches one request may ask for (n x prompts).")
@click.option("--limit-width", type=click.IntRange(1), default=None, help="Most paths one search may keep (reason.n).")
@click.option("--limit-tokens", type=click.IntRange(1), default=None, help="Most max_tokens (per path) a request may ask for.")
@click.option(
    "--limit-searches", type=click.IntRange(1), default=64, show_default=True, help="Searches running at once; the rest queue."
)
@click.option(
    "--limit-queue",
    type=click.IntRange(0),
    default=256,
    show_default=True,
    help="Searches that may wait for a slot; a request past it gets 429 with Retry-After.",
)
@click.option(
    "--deadline",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Seconds a request may take, queue included; then its searches are cancelled (504). [no deadline]",
)
@click.option(
    "--reasoning/--no-reasoning",
    default=True,
    show_default=True,
    help="Chat answers carry the search's narration and a <think> model's thinking in reasoning_content (and "
    "reasoning), streamed as the search runs, the answer in content; --no-reasoning: everything in content, "
    "progress only in the reason extension. A request decides for itself with reason.reasoning.",
)
@run_options
def serve_command(
    host: str,
    port: int,
    served_model_name: str | None,
    access_log: bool,
    request_options: bool,
    api_keys: tuple[str, ...],
    limit_n: int | None,
    limit_width: int | None,
    limit_tokens: int | None,
    limit_searches: int,
    limit_queue: int,
    deadline: float | None,
    reasoning: bool,
    **params: Any,
) -> None:
    """Serve the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models,
    /health) with test-time search behind every answer.

    The recipe and flags (the same as `reason solve`) are the default strategy; a request
    picks another with the model name STRATEGY/MODEL or extra_body={"reason": {"search":
    "beam", "n": 8, ...}}. Requests share one model and one continuous batch.
    """
    config = config_from(params)
    import uvicorn

    from reason.runtime import Runtime

    from .app import create_app
    from .limits import Limits

    if any(not key.strip() for key in api_keys):
        raise click.BadParameter("an API key must not be empty", param_hint="--require-api-key")
    api_keys = (*api_keys, *os.environ.get("REASON_SERVE_API_KEY", "").split())
    limits = Limits(limit_n, limit_width, limit_tokens, limit_searches, limit_queue, deadline)
    Runtime(config).close()  # a bad component name stops here, before the model loads
    app = create_app(
        config,
        served_model_name=served_model_name,
        request_options=request_options,
        limits=limits,
        api_keys=api_keys,
        reasoning=reasoning,
    )
    access = f"{len(api_keys)} API key{'s' if len(api_keys) != 1 else ''}" if api_keys else "open: no API key"
    click.echo(
        f"reason serve: http://{host}:{port}/v1 ({access}; default search: {config.search}; loading the model ...)", err=True
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        access_log=access_log,
        timeout_graceful_shutdown=10,
    )


@hookimpl
def reason_register_commands(cli):
    """Add ``reason serve``."""
    cli.add_command(serve_command)
