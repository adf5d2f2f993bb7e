"""What one sandboxed run produced."""

from __future__ import annotations

from typing import Any

from attrs import asdict, frozen


@frozen
class RunResult:
    """The outcome of one program run. ``exit_code`` is what the engine reported (137 for a
    program SIGKILLed at its time limit or by the OOM killer; ``None`` if it could not be
    read); ``truncated`` says stdout or stderr was cut at the output cap
    (``stdout_bytes``/``stderr_bytes`` are the full sizes seen)."""

    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    oom_killed: bool = False
    truncated: bool = False
    duration_s: float = 0.0
    stdout_bytes: int = 0
    stderr_bytes: int = 0

    @property
    def ok(self) -> bool:
        """The program exited 0 within its limits."""
        return self.exit_code == 0 and not self.timed_out and not self.oom_killed

    def describe(self) -> str:
        """One line on how the run ended, for feedback and logs."""
        if self.timed_out:
            return "timed out (killed at the wall-clock limit)"
        if self.oom_killed:
            return "killed: out of memory"
        if self.exit_code == 0:
            return "exited 0"
        if self.exit_code is not None and self.exit_code > 128:
            return f"killed by signal {self.exit_code - 128}"
        return f"exited {self.exit_code}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "duration_s": round(self.duration_s, 4)}
