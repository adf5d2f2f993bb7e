"""``make bench``: every speed figure of a step search against sampling, in one run (issue 27).

Runs, one after the other on this machine (nothing else should run meanwhile):

1. ``benchmarks/continuous.py``: per engine (transformers, and vLLM where it is installed),
   raw batch decode tok/s, then best-of-n and beam at N=8 as ratios to it in the same
   process, with busy rows, prompt tokens encoded / requested and first-result time;
2. ``benchmarks/step_cost.py --arm new`` (where vLLM is installed): self-consistency,
   beam and DeepConf at N=8 on GSM8K with the default model: wall time per problem and
   its ratio to self-consistency's, prompt tokens encoded / requested, busy rows;
3. ``benchmarks/sandbox_latency.py`` (where a Docker engine answers): the sandbox's p50 /
   p95 latency and runs per second, fresh containers against reused ones.

Each writes its own files under OUT; this script then writes ``OUT/README.md``: the
command, the machine, and the three tables. ``--problems`` sizes the runs (the committed
results say what they used).

    .venv/bin/python benchmarks/bench.py --out benchmarks/results/bench [--problems 16]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(step: str, args: list[str], log: Path) -> bool:
    """Run one benchmark script, its output shown and kept in ``log``; False if it failed."""
    print(f"\n== {step}: {' '.join(args)}", flush=True)
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            out.write(line)
        status = proc.wait()
    print(f"== {step}: {'done' if status == 0 else f'FAILED (exit {status})'} in {time.monotonic() - start:.0f} s", flush=True)
    return status == 0


def docker_answers() -> bool:
    try:
        from reason.sandboxes.engine import connect

        connect(pool_size=2, timeout=5).close()
    except Exception:
        return False
    return True


def sandbox_table(path: Path) -> str:
    data = json.loads(path.read_text())
    lines = ["| sandbox mode | p50 ms | p95 ms | runs/s |", "|---|---|---|---|"]
    for mode in ("reuse", "warm_pool", "cold"):
        row = data[mode]
        lines.append(f"| {mode} | {row['p50_ms']} | {row['p95_ms']} | {row['runs_per_s']} |")
    return "\n".join(lines) + f"\n\n(`{data['command']}`: {data['batch']} programs, {data['workers']} at a time)\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=16, help="problems per search run [16]")
    parser.add_argument("--max-tokens", type=int, default=160, help="token cap of the continuous-batching runs [160]")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench"))
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    vllm = importlib.util.find_spec("vllm") is not None
    docker = docker_answers()
    backends = "transformers,vllm" if vllm else "transformers"
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results: dict[str, bool] = {}
    results["continuous"] = run(
        "engines",
        [str(HERE / "continuous.py"), "--backends", backends, "--no-lockstep", "--eval-limit", "0",
         "--problems", str(args.problems), "--concurrency", str(args.problems), "--max-tokens", str(args.max_tokens),
         "--out", str(out / "continuous")],
        out / "continuous.log",
    )
    if vllm:
        results["step_cost"] = run(
            "step search on vLLM",
            [str(HERE / "step_cost.py"), "--arm", "new", "--problems", str(args.problems), "--out", str(out / "step_cost")],
            out / "step_cost.log",
        )
    if docker:
        results["sandbox"] = run(
            "sandbox", [str(HERE / "sandbox_latency.py"), "--out", str(out / "sandbox")], out / "sandbox.log"
        )

    sections = [
        "# `make bench`\n",
        f"`{Path(sys.executable).name} benchmarks/bench.py {' '.join(sys.argv[1:])}`, started {started}, "
        f"{platform.machine()} with {os.cpu_count()} CPUs, Python {platform.python_version()}.\n",
    ]
    if results.get("continuous"):
        sections += ["## Engines: search tok/s against raw decode (`continuous/`)\n", (out / "continuous" / "table.md").read_text()]
    if results.get("step_cost"):
        sys.path.insert(0, str(HERE))
        from step_cost import table

        sections += ["## Step search against sampling on vLLM (`step_cost/`)\n", table(out / "step_cost")]
    elif not vllm:
        sections.append("vLLM is not installed (`make vllm-deps`): no vLLM rows.\n")
    if results.get("sandbox"):
        sections += ["## The code sandbox (`sandbox/`)\n", sandbox_table(out / "sandbox" / "sandbox.json")]
    elif not docker:
        sections.append("No Docker engine answers (`make docker-engine`): no sandbox rows.\n")
    failed = [name for name, ok in results.items() if not ok]
    if failed:
        sections.append(f"FAILED: {', '.join(failed)} (see the logs here).\n")
    (out / "README.md").write_text("\n".join(sections))
    print("\n" + "\n".join(sections))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
