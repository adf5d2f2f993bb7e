"""How many problems a step search with a slow verifier keeps in flight, with and without
``Filling``'s check that no path waits for a verifier before it starts more for idle rows.

DVTS@8 (M=2) with the probe on vLLM, GSM8K test's first PROBLEMS problems, the settings of
the quality table; one arm per process, stopped after SECONDS: prints, every 10 s, the
problems in flight, the paths waiting for the verifier, the sequences in the engine, and
the problems finished.

    .venv/bin/python benchmarks/filling_verifier.py before 300   # Filling without the check
    .venv/bin/python benchmarks/filling_verifier.py after 300
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from reason import Config, Runtime
from reason.types import Task

PROBLEMS = 64


def main(arm: str, seconds: float) -> None:
    filling_for = Runtime.filling_for
    held = {}

    def patched(self, config=None, concurrency=None):
        filling = filling_for(self, config, concurrency)
        if arm == "before":
            filling.verifying = None
        held["filling"] = filling
        return filling

    Runtime.filling_for = patched
    config = Config(
        model="qwen2.5-coder-0.5b",
        backend="vllm",
        search="dvts",
        n=8,
        verifier="probe",
        temperature=0.8,
        seed=0,
        step_tokens=64,
        max_tokens=512,
    ).replace(beam_width=2, weighted=True)
    rows = [json.loads(line) for line in Path("../shared/data/gsm8k/test.jsonl").open()][:PROBLEMS]
    tasks = [Task(question=r["question"], id=f"gsm8k/{i}", kind="math") for i, r in enumerate(rows)]
    runtime = Runtime(config)
    done: list[int] = []
    start = time.perf_counter()

    def sample() -> None:
        peak = 0
        while time.perf_counter() - start < seconds:
            time.sleep(10)
            filling, engines = held.get("filling"), runtime._engines
            running = filling.running if filling else 0
            peak = max(peak, running)
            line = {
                "arm": arm,
                "s": round(time.perf_counter() - start),
                "in_flight": running,
                "peak": peak,
                "verifying": engines.verifying if engines else 0,
                "sequences": engines.sequences if engines else 0,
                "finished": len(done),
            }
            print(json.dumps(line), flush=True)
        os._exit(0)

    threading.Thread(target=sample, daemon=True).start()
    runtime.solve_many(tasks, on_solution=lambda s: done.append(1))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
