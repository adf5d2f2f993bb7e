"""``reason sandbox``: build the image, check the engine, run a file, clean up.

Only click is imported here; each command imports the docker-backed modules in its
body, so ``reason --help`` never loads the docker SDK.
"""

from __future__ import annotations

import json
import sys

import click


@click.group("sandbox")
def sandbox_group() -> None:
    """The Docker code sandbox (functional verifier `sandbox`).

    \b
    reason sandbox doctor          is an engine there? is the image built?
    reason sandbox build           build the image locally (no registry needed)
    reason sandbox run prog.py     run a file, hardened (no network, read-only, limits)
    reason sandbox clean           remove containers left by crashed runs (--all: every one)
    """


@sandbox_group.command("build")
@click.option("--force", is_flag=True, help="Rebuild even if the image exists.")
@click.option("--mirror", metavar="URL", help="Debian mirror for debootstrap [$REASON_SANDBOX_MIRROR, deb.debian.org].")
def build_command(force: bool, mirror: str | None) -> None:
    """Build the sandbox image (debootstrap + docker import), unless it exists."""
    from .image import build

    tag, built = build(force=force, mirror=mirror, log=lambda line: click.echo(f"sandbox build: {line}", err=True))
    click.echo(f"{tag} {'built' if built else 'already exists'}")


@sandbox_group.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def doctor_command(as_json: bool) -> None:
    """Say whether an engine answers and the image exists, and what to run if not.
    Exits 0 when the sandbox is ready, 1 otherwise."""
    from .engine import ENGINE_FIX, EngineUnavailable, connect
    from .image import image_exists, image_tag
    from .sweep import labelled

    fixes: list[str] = []
    report: dict[str, object] = {"image": image_tag(), "engine": None, "image_exists": None, "containers": None, "fix": fixes}
    try:
        client = connect(pool_size=2, timeout=10)
    except EngineUnavailable as exc:
        report["engine_error"] = str(exc)
        fixes += [ENGINE_FIX, "then: reason sandbox build"]
    else:
        version = client.version()
        report["engine"] = f"Docker {version.get('Version')} (API {version.get('ApiVersion')})"
        report["image_exists"] = image_exists(client, image_tag())
        report["containers"] = len(labelled(client))
        if not report["image_exists"]:
            fixes.append("reason sandbox build   (needs root and the Debian mirror, about a minute)")
    ready = bool(report["engine"]) and bool(report["image_exists"])
    report["ready"] = ready
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(f"engine:     {report['engine'] or 'NOT REACHABLE'}")
        if report.get("engine_error"):
            click.echo(f"            {report['engine_error']}")
        exists = report["image_exists"]
        click.echo(f"image:      {report['image']} ({'present' if exists else 'missing' if exists is False else 'unknown'})")
        if report["containers"] is not None:
            click.echo(f"containers: {report['containers']} labelled reason-runtime.sandbox")
        click.echo(f"ready:      {'yes' if ready else 'no'}")
        for fix in fixes:
            click.echo(f"fix:        {fix}")
    sys.exit(0 if ready else 1)


@sandbox_group.command("run")
@click.argument("file", type=click.File("r"))
@click.option("--stdin", "stdin_file", type=click.File("rb"), help="File fed to the program's stdin.")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Wall-clock limit in seconds.")
@click.option("--memory", type=int, default=256, show_default=True, help="Memory limit in MB (no swap).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the program's output.")
def run_command(file, stdin_file, timeout: float, memory: int, as_json: bool) -> None:
    """Run FILE (Python 3) in a hardened container: no network, read-only root, non-root,
    no capabilities, pids/memory/CPU limits, killed at --timeout.

    Without --json the program's stdout and stderr are passed through and the exit status
    is the program's (124 on timeout). With --json: one object with exit_code, stdout,
    stderr, timed_out, oom_killed, truncated, duration_s.
    """
    from reason.errors import UsageError

    from .limits import Limits
    from .runner import Sandbox

    try:
        limits = Limits(timeout_s=timeout, memory_mb=memory)
    except ValueError as exc:
        raise UsageError(f"--timeout must be > 0 and --memory at least 16 (MB): {exc}") from None
    code = file.read()
    stdin = stdin_file.read() if stdin_file is not None else b""
    with Sandbox(limits) as sandbox:
        result = sandbox.run(code, stdin)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    sys.stdout.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.write(result.stderr)
    if result.truncated:
        click.echo("reason sandbox: output truncated at the cap", err=True)
    if not result.ok:
        click.echo(f"reason sandbox: {result.describe()}", err=True)
    sys.exit(124 if result.timed_out else (result.exit_code or 0))


@sandbox_group.command("clean")
@click.option(
    "--all", "everything", is_flag=True, help="Every sandbox container, also those of runs still going (they will fail)."
)
def clean_command(everything: bool) -> None:
    """Remove sandbox containers whose owner process has died (a crash, a SIGKILL).

    Containers of live runs on this host are kept, so cleaning up never breaks an
    evaluation that is still running; --all removes those too.
    """
    from .engine import connect
    from .sweep import clean, sweep

    client = connect(pool_size=2)
    removed = clean(client) if everything else sweep(client)
    click.echo(f"removed {removed} container{'s' if removed != 1 else ''}")
