"""SIGTERM stops a command the way Ctrl-C does: it unwinds, and the backend is closed."""

from __future__ import annotations

import os
import signal

import pytest
from scripted import ScriptedBackend

from reason import get_registry
from reason.cli import main


class TerminatedMidGeneration(ScriptedBackend):
    """Sends this process SIGTERM from inside ``generate``, as ``kill`` would mid-run."""

    closed = False

    def generate(self, requests):
        os.kill(os.getpid(), signal.SIGTERM)
        return super().generate(requests)

    def close(self) -> None:
        type(self).closed = True


@pytest.fixture
def backend():
    registry = get_registry()
    registry.add("backend", "sigterm", lambda config, arg: TerminatedMidGeneration(config=config))
    yield "sigterm"
    registry.remove("backend", "sigterm")
    import structlog

    structlog.reset_defaults()  # main() configured logging for the CLI; later tests expect none


def test_sigterm_unwinds_like_ctrl_c_closes_the_backend_and_exits_143(backend, capsys):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exited:
        main(["solve", "--backend", backend, "--search", "greedy", "What is 2 + 2?"])
    assert exited.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().endswith("reason: terminated")
    assert TerminatedMidGeneration.closed
    assert signal.getsignal(signal.SIGTERM) is before  # the handler lives as long as the command
