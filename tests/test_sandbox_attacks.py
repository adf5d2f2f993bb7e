"""The attack suite: hostile programs against the real Docker sandbox.

Each case must be contained with a clear result (the program fails, times out or is
killed, and the result says which), and the host must be unaffected. After the suite,
no container this process labelled is left (checked in the fixture's teardown).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import uuid

import pytest

from reason.sandboxes import Limits, Sandbox
from reason.sandboxes.engine import LABEL, LABEL_OWNER, EngineUnavailable, connect, owner_id

pytestmark = pytest.mark.docker

TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def client():
    try:
        client = connect()
    except EngineUnavailable as exc:
        pytest.skip(str(exc))
    from reason.sandboxes.image import build

    build(client)  # idempotent: `make test` has built it already; builds only where it is missing
    yield client
    client.close()


def my_containers(client) -> list[dict]:
    """Labelled containers created by this test process (other processes on the same
    engine, e.g. another session's evaluation, are not ours to judge)."""
    return [
        c
        for c in client.api.containers(all=True, filters={"label": LABEL})
        if (c.get("Labels") or {}).get(LABEL_OWNER) == owner_id()
    ]


@pytest.fixture(scope="module", params=["fresh", "reuse"])
def sandbox(client, request):
    """Every attack runs against both ways of running: a fresh container per program, and
    warm containers that the supervisor resets between programs."""
    sandbox = Sandbox(
        Limits(timeout_s=TIMEOUT_S, memory_mb=256, pids=64),
        pool_size=2,
        client=client,
        max_workers=6,
        reuse=request.param == "reuse",
    )
    sandbox.start()
    yield sandbox
    sandbox.close()
    left = my_containers(client)
    assert left == [], f"the attack suite left labelled containers behind: {[c['Id'][:12] for c in left]}"


def host_still_works() -> None:
    """The host can still start processes and allocate memory."""
    proc = subprocess.run([sys.executable, "-c", "print(len(bytearray(50 * 2**20)))"], capture_output=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == str(50 * 2**20).encode()


def report(result) -> dict:
    """The JSON object a probe program printed last."""
    assert result.stdout.strip(), f"no output; stderr: {result.stderr[-500:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_sanity_a_plain_program_runs(sandbox):
    result = sandbox.run("print(sum(range(10)))")
    assert result.ok and result.stdout == "45\n" and result.exit_code == 0


def test_fork_bomb_hits_the_pids_limit(sandbox):
    result = sandbox.run(
        "import errno, json, os, time\n"
        "children, failure = 0, None\n"
        "for _ in range(100000):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as exc:\n"
        "        failure = exc.errno\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    children += 1\n"
        "print(json.dumps({'children': children, 'errno': failure}), flush=True)\n"
    )
    probe = report(result)
    assert probe["errno"] == errno.EAGAIN
    assert 0 < probe["children"] < 64
    # the 60-second sleepers died with the container: the run did not wait for them
    assert result.ok and not result.timed_out
    host_still_works()


def test_classic_fork_bomb_is_contained(sandbox):
    result = sandbox.run("import os\nwhile True:\n    os.fork()\n", timeout_s=3)
    assert not result.ok
    assert result.timed_out or result.exit_code != 0
    host_still_works()


def test_memory_bomb_is_killed(sandbox):
    result = sandbox.run("chunks = []\nwhile True:\n    chunks.append(b'x' * 10**7)\n")
    assert not result.ok and not result.timed_out
    assert result.oom_killed or "MemoryError" in result.stderr
    assert "out of memory" in result.describe() or result.exit_code == 1
    host_still_works()


def test_cpu_spin_is_killed_at_the_timeout(sandbox):
    result = sandbox.run("while True:\n    pass\n", timeout_s=2)
    assert result.timed_out and not result.ok
    assert result.exit_code == 137  # SIGKILLed
    assert result.duration_s >= 2
    assert "timed out" in result.describe()


def test_sleep_past_the_timeout_is_killed(sandbox):
    result = sandbox.run("import time\nprint('before', flush=True)\ntime.sleep(3600)\nprint('after')\n", timeout_s=2)
    assert result.timed_out and not result.ok
    assert result.stdout == "before\n"  # output up to the kill is kept


def test_sigterm_is_ignored_but_the_kill_still_lands(sandbox):
    result = sandbox.run(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(3600)\n", timeout_s=2
    )
    assert result.timed_out


def test_no_tcp_network(sandbox):
    result = sandbox.run(
        "import json, os, socket\n"
        "outcomes = {}\n"
        "for host, port in [('1.1.1.1', 53), ('8.8.8.8', 443), ('172.17.0.1', 2375), ('10.0.0.1', 80)]:\n"
        "    try:\n"
        "        socket.create_connection((host, port), timeout=2).close()\n"
        "        outcomes[host] = 'CONNECTED'\n"
        "    except OSError as exc:\n"
        "        outcomes[host] = exc.errno\n"
        "print(json.dumps({'outcomes': outcomes, 'interfaces': sorted(os.listdir('/sys/class/net'))}))\n"
    )
    probe = report(result)
    assert probe["interfaces"] == ["lo"]
    assert all(outcome == errno.ENETUNREACH for outcome in probe["outcomes"].values()), probe


def test_no_dns_and_no_udp(sandbox):
    result = sandbox.run(
        "import json, socket\n"
        "out = {}\n"
        "try:\n"
        "    socket.getaddrinfo('deb.debian.org', 80)\n"
        "    out['dns'] = 'RESOLVED'\n"
        "except socket.gaierror as exc:\n"
        "    out['dns'] = exc.errno\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "try:\n"
        "    s.sendto(b'x', ('8.8.8.8', 53))\n"
        "    out['udp'] = 'SENT'\n"
        "except OSError as exc:\n"
        "    out['udp'] = exc.errno\n"
        "print(json.dumps(out))\n"
    )
    probe = report(result)
    assert probe["dns"] != "RESOLVED" and probe["udp"] == errno.ENETUNREACH, probe


def test_writing_outside_the_work_dir_fails(sandbox):
    result = sandbox.run(
        "import json\n"
        "out = {}\n"
        "for path in ['/etc/passwd', '/etc/evil', '/usr/bin/evil', '/evil', '/var/evil', '/root/evil',\n"
        "             '/home/evil', '/proc/sysrq-trigger', '/sys/kernel/evil', '/sandbox/ok']:\n"
        "    try:\n"
        "        with open(path, 'a') as f:\n"
        "            f.write('x')\n"
        "        out[path] = 'WROTE'\n"
        "    except OSError as exc:\n"
        "        out[path] = exc.errno\n"
        "print(json.dumps(out))\n"
    )
    probe = report(result)
    assert probe.pop("/sandbox/ok") == "WROTE"  # the work dir is writable: the probe works
    assert all(outcome != "WROTE" for outcome in probe.values()), probe
    assert probe["/etc/evil"] == errno.EROFS


def test_filling_the_disk_stops_at_the_tmpfs_size(sandbox):
    result = sandbox.run(
        "import json\n"
        "out = {}\n"
        "for root in ['/sandbox', '/tmp', '/dev/shm']:\n"
        "    total, i, err = 0, 0, None\n"
        "    while err is None and total < 2**31:\n"
        "        try:\n"
        "            with open(f'{root}/fill{i}', 'wb') as f:\n"
        "                for _ in range(8):\n"
        "                    f.write(b'0' * 2**20)\n"
        "                    f.flush()\n"
        "                    total += 2**20\n"
        "        except OSError as exc:\n"
        "            err = exc.errno\n"
        "        i += 1\n"
        "    out[root] = [total, err]\n"
        "print(json.dumps(out))\n"
    )
    probe = report(result)
    limits = sandbox.limits
    assert probe["/sandbox"][1] == errno.ENOSPC and probe["/sandbox"][0] <= (limits.workdir_mb + 1) * 2**20
    assert probe["/tmp"][1] == errno.ENOSPC and probe["/tmp"][0] <= (limits.workdir_mb // 4 + 1) * 2**20
    assert probe["/dev/shm"][1] == errno.ENOSPC and probe["/dev/shm"][0] <= 2 * 2**20


def test_one_huge_file_hits_the_file_size_limit(sandbox):
    result = sandbox.run(
        "import json\n"
        "total, err = 0, None\n"
        "try:\n"
        "    with open('/sandbox/big', 'wb') as f:\n"
        "        while total < 2**31:\n"
        "            f.write(b'0' * 2**20)\n"
        "            f.flush()\n"
        "            total += 2**20\n"
        "except OSError as exc:\n"
        "    err = exc.errno\n"
        "print(json.dumps([total, err]))\n"
    )
    total, err = report(result)
    assert err == errno.EFBIG and total <= sandbox.limits.file_mb * 2**20


def test_100_mb_of_output_is_capped(sandbox):
    result = sandbox.run(
        "import sys\n"
        "chunk = 'y' * 2**20\n"
        "for _ in range(100):\n"
        "    sys.stdout.write(chunk)\n"
        "sys.stdout.flush()\n"
        "sys.stderr.write('e' * 3 * 2**20 + 'DONE')\n"
    )
    assert result.exit_code == 0 and not result.timed_out
    assert result.truncated
    assert result.stdout_bytes == 100 * 2**20
    assert result.stderr_bytes == 3 * 2**20 + 4
    cap = sandbox.limits.output_bytes
    assert len(result.stdout) <= cap + 100 and len(result.stderr) <= cap + 100
    assert result.stderr.endswith("DONE")  # the tail is kept, where tracebacks end


def test_host_paths_are_not_visible(sandbox, tmp_path):
    secret = uuid.uuid4().hex
    host_files = [tmp_path / "secret.txt", f"/tmp/reason-sandbox-secret-{uuid.uuid4().hex}"]
    for path in host_files:
        with open(path, "w") as f:
            f.write(secret)
    try:
        paths = [str(p) for p in host_files] + [
            "/var/run/docker.sock", "/run/docker.sock", os.path.abspath(__file__), "/root/.bashrc",
        ]
        result = sandbox.run(
            "import json, os\n"
            f"paths = {paths!r}\n"
            "seen = {p: os.path.exists(p) for p in paths}\n"
            "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
            "print(json.dumps({'seen': seen, 'pids': pids, 'hostname': open('/etc/hostname').read().strip(),\n"
            "                  'init': open('/proc/1/cmdline').read().split(chr(0))[0]}))\n"
        )
        probe = report(result)
        assert not any(probe["seen"].values()), probe["seen"]
        assert len(probe["pids"]) <= 3, probe["pids"]  # our pid 1, python, nothing of the host
        assert probe["init"] == ("python3" if sandbox.reuse else "timeout")  # the supervisor, or timeout
        assert probe["hostname"] == "sandbox"
        assert secret not in result.stdout + result.stderr
    finally:
        os.unlink(host_files[1])


def test_privilege_escalation_attempts_fail(sandbox):
    result = sandbox.run(
        "import ctypes, json, os\n"
        "out = {'uid': os.getuid(), 'euid': os.geteuid()}\n"
        "def attempt(name, fn):\n"
        "    try:\n"
        "        fn()\n"
        "        out[name] = 'OK'\n"
        "    except OSError as exc:\n"
        "        out[name] = exc.errno\n"
        "attempt('setuid', lambda: os.setuid(0))\n"
        "attempt('setgid', lambda: os.setgid(0))\n"
        "attempt('setgroups', lambda: os.setgroups([0]))\n"
        "attempt('chroot', lambda: os.chroot('/'))\n"
        "attempt('mknod', lambda: os.mknod('/sandbox/dev', 0o600 | 0o060000, os.makedev(8, 0)))\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "out['mount'] = libc.mount(b'none', b'/sandbox', b'tmpfs', 0, None)\n"
        "out['unshare_user'] = libc.unshare(0x10000000)\n"
        "out['unshare_mount'] = libc.unshare(0x00020000)\n"
        "status = {l.split(':')[0]: l.split(':')[1].strip() for l in open('/proc/self/status') if ':' in l}\n"
        "out['caps'] = [status[k] for k in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb')]\n"
        "out['no_new_privs'] = status['NoNewPrivs']\n"
        "import stat, subprocess\n"
        "setuid = [os.path.join(d, n) for d in ('/usr/bin', '/usr/sbin') for n in os.listdir(d)\n"
        "          if os.stat(os.path.join(d, n)).st_mode & stat.S_ISUID]\n"
        "out['setuid_binaries'] = setuid\n"
        "su = subprocess.run(['su', 'root', '-c', 'id -u'], input='', capture_output=True, text=True, timeout=20)\n"
        "out['su'] = [su.returncode, su.stdout.strip()]\n"
        "print(json.dumps(out))\n"
    )
    probe = report(result)
    assert probe["uid"] == 65534 and probe["euid"] == 65534
    for name in ("setuid", "setgid", "setgroups", "chroot", "mknod"):
        assert probe[name] == errno.EPERM, (name, probe)
    assert probe["mount"] == -1 and probe["unshare_user"] == -1 and probe["unshare_mount"] == -1
    assert probe["caps"] == ["0000000000000000"] * 5
    assert probe["no_new_privs"] == "1"
    # the image has setuid binaries (su, mount, ...), but no-new-privileges makes them inert
    assert "/usr/bin/su" in probe["setuid_binaries"]
    assert probe["su"][0] != 0 and probe["su"][1] != "0", probe["su"]


def test_many_runs_in_parallel_stay_apart(sandbox):
    programs = [f"import time\ntime.sleep(0.2)\nprint({i} * 2)\n" for i in range(12)]
    programs += ["while True:\n    pass\n", "x = []\nwhile True:\n    x.append(b'x' * 10**7)\n"]
    results = sandbox.run_many(programs, max_workers=6)
    assert len(results) == len(programs)
    for i, result in enumerate(results[:12]):
        assert result.ok and result.stdout == f"{i * 2}\n", (i, result)
    assert results[12].timed_out
    assert not results[13].ok and (results[13].oom_killed or "MemoryError" in results[13].stderr)
    host_still_works()
