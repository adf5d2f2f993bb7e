"""The accuracy-vs-compute table from the runs of ``benchmarks/quality.sh`` (issue 16).

Reads every run directory under ``benchmarks/results/quality/`` (finished or not: the
numbers come from results.jsonl, so a run stopped midway shows the problems it finished,
and the row says how many) and writes ``table.md`` beside them.

    .venv/bin/python benchmarks/quality_table.py

Columns: the strategy's choice (accuracy), the oracle-free vote at N (maj@N for answers),
pass@N for code (an oracle ceiling: some candidate passes the hidden tests), generated
tokens and wall seconds per problem, DeepConf's tokens saved against N full traces, and,
for HumanEval, how many problems had no public tests (their candidates unverified).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from reason.eval.metrics import compute_metrics
from reason.eval.results import records_in

ROOT = Path(__file__).resolve().parent / "results" / "quality"


def row(directory: Path) -> dict[str, Any] | None:
    records = list(records_in(directory))
    if not records:
        return None
    run = json.loads((directory / "run.json").read_text())
    config = run["identity"]["config"]
    summary = compute_metrics(records, int(config["n"]))
    n = summary["n"]
    saved = [r["meta"].get("saved_fraction") for r in records if isinstance(r.get("meta"), dict)]
    saved = [s for s in saved if s is not None]
    code = records[0].get("kind") == "code"
    return {
        "run": directory.name,
        "dataset": run["identity"]["dataset"],
        "problems": len(records),
        "limit": run.get("limit"),
        "accuracy": summary["accuracy"],
        "vote": summary.get(f"maj@{n}") if not code and n > 1 else None,
        "pass": summary.get(f"pass@{n}") if code else None,
        "tokens": summary["tokens_per_problem"],
        "seconds": summary["seconds_per_problem"],
        "saved": sum(saved) / len(saved) if saved else None,
        "unverified": sum(1 for r in records if code and not r.get("public_tests")) if code else None,
    }


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run | problems | choice | maj@N | pass@N (oracle) | tokens/problem | s/problem | DeepConf saved | no public tests |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        done = f"{r['problems']}" + (f" of {r['limit']}" if r["limit"] and r["limit"] != r["problems"] else "")
        lines.append(
            f"| {r['run']} | {done} | {pct(r['accuracy'])} | {pct(r['vote'])} | {pct(r['pass'])} | "
            f"{r['tokens']:.0f} | {r['seconds']:.1f} | {pct(r['saved'])} | "
            f"{'-' if r['unverified'] is None else r['unverified']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args()
    rows = [r for d in sorted(args.root.iterdir()) if d.is_dir() and (r := row(d)) is not None]
    table = render(rows)
    (args.root / "table.md").write_text(table)
    print(table, end="")


if __name__ == "__main__":
    main()
