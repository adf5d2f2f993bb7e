"""How much a sandboxed program may use. Defaults fit a unit-test-sized program."""

from __future__ import annotations

from attrs import field, frozen, validators


@frozen
class Limits:
    """Resource limits of one run. Every container gets all of them; none can be switched off."""

    timeout_s: float = field(default=10.0, validator=validators.gt(0))
    """Wall-clock limit, from the moment the program is handed over; the container is killed."""
    memory_mb: int = field(default=256, validator=validators.ge(16))
    """Memory, with swap equal to it (so no swap)."""
    cpus: float = field(default=1.0, validator=validators.gt(0))
    pids: int = field(default=64, validator=validators.ge(4))
    """Processes and threads inside the container (stops fork bombs)."""
    workdir_mb: int = field(default=64, validator=validators.ge(1))
    """Size of the tmpfs work dir /sandbox (and /tmp gets a quarter of it)."""
    file_mb: int = field(default=32, validator=validators.ge(1))
    """Largest file a process may write (RLIMIT_FSIZE)."""
    open_files: int = field(default=256, validator=validators.ge(16))
    output_bytes: int = field(default=64 * 1024, validator=validators.ge(1024))
    """Bytes kept of stdout and of stderr each; the rest is dropped and ``truncated`` set."""
