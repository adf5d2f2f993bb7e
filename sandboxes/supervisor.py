"""The program a reusable sandbox container runs as its PID 1: it runs one program at a time
and resets the container between them.

This file is not imported by the runtime: its source is the container's command
(``python3 -I -c <source>``), so it needs nothing but the image's standard library, and it
runs with the container's hardening (uid 65534, no capabilities, no network, read-only
root). Why it can be trusted to outlive hostile programs of the same uid:

- As PID 1 of the container's PID namespace it receives no signal from inside the
  namespace that it has no handler for, SIGKILL and SIGSTOP included; it installs none.
- It makes itself non-dumpable, so the same uid cannot ptrace it or open its memory or
  file descriptors through /proc.
- Between runs it kills every other process (``kill(-1, SIGKILL)`` until none is left),
  empties the writable places (the work dir, /tmp, /dev/shm) and removes System V IPC
  objects, then checks that all of it is gone. Anything left, or anything unexpected at
  all, and it exits: the host throws the container away.

Protocol, one run at a time. Host to supervisor, on stdin: a line
``<code bytes> <stdin bytes> <timeout seconds>`` then the code, then the program's stdin.
Supervisor to host, on stdout: frames of one kind byte and a 4-byte big-endian length:
``o`` (program stdout), ``e`` (program stderr), ``x`` (the last one: a JSON object with
``exit_code``, ``timed_out``, ``oom_killed``, ``duration_s``). EOF on stdin (the host is
gone) ends the supervisor, and with it the container.
"""

import ctypes
import json
import os
import select
import signal
import struct
import sys
import time

WORKDIR = "/sandbox"
SCRUBBED = ("/sandbox", "/tmp", "/dev/shm")
ENV = {"HOME": WORKDIR, "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
PROGRAM = ["sh", "-c", "echo 1000 > /proc/self/oom_score_adj; exec python3 main.py"]
"""The program is the OOM killer's first choice, never the supervisor."""
FRAME = struct.Struct(">cL")
CHUNK = 64 * 1024
IPC_RMID = 0


def frame(kind, data):
    view = FRAME.pack(kind, len(data)) + data
    while view:
        view = view[os.write(1, view) :]


def read_exactly(n):
    parts = []
    while n > 0:
        part = os.read(0, min(n, 1 << 20))
        if not part:
            sys.exit(0)
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def read_header():
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            sys.exit(0)
        line += byte
        if len(line) > 100:
            sys.exit(3)
    code_len, stdin_len, timeout_s = line.split()
    return int(code_len), int(stdin_len), float(timeout_s)


def oom_kills():
    """The container's OOM kills so far (cgroup v2, then v1), or None where neither says."""
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        try:
            with open(path) as events:
                for line in events:
                    name, _, value = line.partition(" ")
                    if name == "oom_kill":
                        return int(value)
        except OSError:
            pass
    return None


def spawn(stdin_r, stdout_w, stderr_w):
    pid = os.fork()
    if pid == 0:  # the child: only async-signal-safe work until exec
        try:
            os.setsid()
            os.dup2(stdin_r, 0)
            os.dup2(stdout_w, 1)
            os.dup2(stderr_w, 2)
            os.closerange(3, 1 << 16)
            os.chdir(WORKDIR)
            os.execvpe(PROGRAM[0], PROGRAM, ENV)
        finally:
            os._exit(127)
    return pid


def reap(statuses):
    """Collect every exited child (orphans land on PID 1); remember each status."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        statuses[pid] = status


def others():
    me = str(os.getpid())
    return [p for p in os.listdir("/proc") if p.isdigit() and p != me]


def kill_all(statuses):
    """Kill every process but this one, and reap them. False if some survive."""
    for _ in range(200):
        reap(statuses)
        if not others():
            return True
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(0.005)
    reap(statuses)
    return not others()


def scrub(path):
    """Empty a writable directory whatever its entries' modes."""
    try:
        os.chmod(path, 0o700 if path == WORKDIR else 0o1777)
    except OSError:
        pass  # /tmp and /dev/shm belong to root: their modes cannot have changed
    for entry in os.scandir(path):
        full = entry.path
        if entry.is_dir(follow_symlinks=False):
            try:
                os.chmod(full, 0o700)
            except OSError:
                pass
            scrub(full)
            os.rmdir(full)
        else:
            os.unlink(full)


def remove_ipc():
    libc = ctypes.CDLL(None, use_errno=True)
    for kind, remove in (
        ("shm", lambda i: libc.shmctl(i, IPC_RMID, None)),
        ("sem", lambda i: libc.semctl(i, 0, IPC_RMID)),
        ("msg", lambda i: libc.msgctl(i, IPC_RMID, None)),
    ):
        for ident in ipc_ids(kind):
            remove(ident)


def ipc_ids(kind):
    try:
        with open(f"/proc/sysvipc/{kind}") as table:
            return [int(line.split()[1]) for line in list(table)[1:] if line.strip()]
    except OSError:
        return []


def reset(statuses):
    """Back to the state a fresh container starts in; False if that could not be done."""
    if not kill_all(statuses):
        return False
    for path in SCRUBBED:
        scrub(path)
    remove_ipc()
    return all(not os.listdir(p) for p in SCRUBBED) and not any(ipc_ids(k) for k in ("shm", "sem", "msg"))


def run_one():
    code_len, stdin_len, timeout_s = read_header()
    code = read_exactly(code_len)
    data = read_exactly(stdin_len)
    with open(os.path.join(WORKDIR, "main.py"), "wb") as main:
        main.write(code)
    oom_before = oom_kills()
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    start = time.monotonic()
    pid = spawn(stdin_r, out_w, err_w)
    for fd in (stdin_r, out_w, err_w):
        os.close(fd)
    os.set_blocking(stdin_w, False)
    try:
        exited = os.pidfd_open(pid)
    except (AttributeError, OSError):
        exited = None
    readers = {out_r: b"o", err_r: b"e"}
    pending = memoryview(data)
    if not pending:
        os.close(stdin_w)
    deadline = start + timeout_s
    statuses = {}
    timed_out = False
    while pid not in statuses:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        waits = list(readers) + ([exited] if exited is not None else [])
        writes = [stdin_w] if pending else []
        ready_r, ready_w, _ = select.select(waits, writes, [], min(left, 0.05 if exited is None else left))
        if ready_w:
            try:
                pending = pending[os.write(stdin_w, pending[:CHUNK]) :]
            except BlockingIOError:
                pass
            except BrokenPipeError:  # the program stopped reading: the rest is dropped
                pending = pending[:0]
            if not pending:
                os.close(stdin_w)
        for fd in ready_r:
            if fd == exited:
                continue
            chunk = os.read(fd, CHUNK)
            if chunk:
                frame(readers[fd], chunk)
            else:
                del readers[fd]
                os.close(fd)
        reap(statuses)
    duration = time.monotonic() - start
    if pending:
        os.close(stdin_w)
    clean = kill_all(statuses)
    for fd, kind in readers.items():  # every writer is dead now: drain to EOF
        while chunk := os.read(fd, CHUNK):
            frame(kind, chunk)
        os.close(fd)
    if exited is not None:
        os.close(exited)
    status = statuses.get(pid)
    if status is None or os.WIFSIGNALED(status):
        exit_code = 128 + (os.WTERMSIG(status) if status is not None else signal.SIGKILL)
    else:
        exit_code = os.WEXITSTATUS(status)
    oom_after = oom_kills()
    oom = None if oom_before is None or oom_after is None else (not timed_out and oom_after > oom_before)
    clean = clean and reset(statuses)
    result = {"exit_code": exit_code, "timed_out": timed_out, "oom_killed": oom, "duration_s": duration, "reusable": clean}
    frame(b"x", json.dumps(result).encode())
    return clean


def main():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # PID 1 with no handler ignores it
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no ptrace, no /proc/1/mem
    if os.getpid() != 1 or not reset({}):
        sys.exit(2)
    while run_one():
        pass
    sys.exit(0)


if __name__ == "__main__":  # as the container's command; importing this file runs nothing
    main()
