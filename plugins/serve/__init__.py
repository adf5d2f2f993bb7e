"""``reason serve``: an OpenAI-compatible server whose every answer comes from a
test-time search.

Registered like any third-party plugin, through ``reason_register_commands``. This
module imports only click: the ASGI stack (FastAPI, uvicorn, sse-starlette) and the
model load when the command runs. The app is :mod:`reason.plugins.serve.app`; the wire
format and its extensions are documented in :mod:`reason.plugins.serve.protocol`.
"""

from __future__ import annotations

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
@run_options
def serve_command(
    host: str, port: int, served_model_name: str | None, access_log: bool, request_options: bool, **params: Any
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

    Runtime(config).close()  # a bad component name stops here, before the model loads
    app = create_app(config, served_model_name=served_model_name, request_options=request_options)
    click.echo(f"reason serve: http://{host}:{port}/v1 (default search: {config.search}; loading the model ...)", err=True)
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
