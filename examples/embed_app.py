"""Embedding reason-runtime in an application.

Solves a few MultiArith problems at once (the requests of all problems share the
engine's batch; each solution is printed as it finishes), streams the events of one
more, answers two questions from two threads on the same runtime, and prints accuracy
and cost.

    python examples/embed_app.py [--limit 5] [--n 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from reason import Config, Runtime, Solution, Task
from reason.answers import is_equivalent

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "multiarith" / "test.jsonl"


def load(limit: int) -> list[Task]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:limit]]
    return [Task(question=r["input"], id=f"multiarith/{i}", reference=str(r["target"])) for i, r in enumerate(rows)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=5)
    parser.add_argument("--n", type=int, default=4)
    args = parser.parse_args()

    tasks = load(args.limit + 1)
    config = Config(search="best-of-n", n=args.n, verifier="confidence", options={"best-of-n": {"weighted": True}}, max_tokens=256, seed=0)
    with Runtime(config) as runtime:
        # 1. many problems at once: their samples decode in one batch
        solutions = runtime.solve_many(tasks[:-1], on_solution=lambda s: print(f"  {s.task.id}: {s.answer}"))
        correct = sum(is_equivalent(s.answer, s.task.reference) for s in solutions if s.answer)
        tokens = sum(s.usage.completion_tokens for s in solutions)
        print(f"accuracy {correct}/{len(solutions)}, {tokens} tokens generated")

        # 2. one problem, watching it think
        async def watch() -> Solution:
            async with runtime.stream(tasks[-1]) as run:
                async for event in run:
                    if event.kind in ("StepsGenerated", "AnswerFound", "SearchFinished"):
                        print(f"  event {event.kind}: {json.dumps(event.to_dict(), default=str)[:120]}")
            return run.solution

        print("streamed answer:", asyncio.run(watch()).answer, "reference:", tasks[-1].reference)

        # 3. an application's threads share the runtime (and its batch)
        with ThreadPoolExecutor(2) as pool:
            for solution in pool.map(runtime.solve, ["What is 6 * 7?", "What is 100 - 58?"]):
                print(f"  {solution.task.question} -> {solution.answer}")


if __name__ == "__main__":
    main()
