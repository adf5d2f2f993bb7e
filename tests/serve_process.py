"""`reason serve` as a real subprocess for the integration tests: started on a free port of
127.0.0.1 on the embedded model, waited for until /health answers, stopped (SIGINT, then
the process group) and checked to have exited cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(log: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`reason serve ARGS` (the embedded model on one torch thread unless ARGS pick a
    backend); yields its base URL."""
    port = free_port()
    # faulthandler: a server that never comes up is aborted, and prints every thread's stack
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1", "PYTHONFAULTHANDLER": "1", **(env or {})}
    command = [
        sys.executable, "-c", "from reason.cli import main; main()", "serve", "--host", "127.0.0.1",
        "--port", str(port), "--no-access-log", *args,
    ]  # fmt: skip
    if "--backend" not in args:  # the embedded model, on one torch thread
        command += ["-o", "threads=1"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        if process.poll() is not None:
            pytest.fail(f"reason serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            process.send_signal(signal.SIGABRT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"reason serve did not start in 300 s; its stacks when aborted:\n{log.read_text()[-20000:]}")
        time.sleep(0.5)
    try:
        yield base
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, log.read_text()
