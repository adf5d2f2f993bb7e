"""The accuracy-vs-compute table from the runs of ``benchmarks/quality.sh`` (issue 16).

Reads every run directory under ``benchmarks/results/quality/`` (finished or not: the
numbers come from results.jsonl, so a run stopped midway shows the problems it finished,
and the row says how many) and writes ``table.md`` beside them.

    .venv/bin/python benchmarks/quality_table.py

Columns: the strategy's choice (accuracy), the oracle-free vote at N (maj@N for answers),
pass@N for code (an oracle ceiling: some candidate passes the hidden tests), generated
tokens and wall seconds per problem, DeepConf's tokens saved against N full traces, and,
for HumanEval, how many problems had no public tests (their candidates unverified).

A second table asks whether the verifier helps, on each run's own candidates: the
majority vote, the score-weighted vote and the top score (naive) at N on the same
samples; "any right" (some candidate is right: what a perfect chooser gets); and the
score's AUROC (the chance that a right candidate outscores a wrong one of the same run:
0.5 is a coin).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from reason.eval.metrics import compute_metrics
from reason.eval.results import records_in

ROOT = Path(__file__).resolve().parent / "results" / "quality"


def row(run: dict[str, Any], records: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The main table's row of one run (``run``: its run.json)."""
    if not records:
        return None
    summary = compute_metrics(records, int(run["identity"]["config"]["n"]))
    n = summary["n"]
    saved = [r["meta"].get("saved_fraction") for r in records if isinstance(r.get("meta"), dict)]
    saved = [s for s in saved if s is not None]
    code = records[0].get("kind") == "code"
    return {
        "run": name,
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


def choosers(run: dict[str, Any], records: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """maj/weighted/naive at N, any-right and the score's AUROC on one run's candidates;
    ``None`` for a run without a verifier (self-consistency's rows recorded before its
    candidates lost their scores carry vote shares, not a verifier's scores)."""
    records = [r for r in records if len(r.get("candidates") or []) > 1]
    if not records or run["identity"]["config"].get("verifier") in (None, "none"):
        return None
    n = max(len(r["candidates"]) for r in records)
    summary = compute_metrics(records, n)
    right, wrong = [], []
    for r in records:
        for c in r["candidates"]:
            if c.get("score") is not None:
                (right if c.get("correct") else wrong).append(c["score"])
    pairs = len(right) * len(wrong)
    auroc = sum((a > b) + 0.5 * (a == b) for a in right for b in wrong) / pairs if pairs else None
    return {
        "run": name,
        "n": n,
        "maj": summary.get(f"maj@{n}"),
        "weighted": summary.get(f"weighted@{n}"),
        "naive": summary.get(f"naive@{n}"),
        "any": sum(1 for r in records if any(c.get("correct") for c in r["candidates"])) / len(records),
        "auroc": auroc,
    }


def render_choosers(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run (its own candidates) | N | maj@N | weighted@N | naive@N (top score) | any right | score AUROC |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        auroc = "-" if r["auroc"] is None else f"{r['auroc']:.2f}"
        lines.append(
            f"| {r['run']} | {r['n']} | {pct(r['maj'])} | {pct(r['weighted'])} | {pct(r['naive'])} | "
            f"{pct(r['any'])} | {auroc} |"
        )
    return "\n".join(lines) + "\n"


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
    # rows on the default backend first, then those kept from another (transformers/ROW)
    runs = [
        (json.loads(f.read_text()), list(records_in(f.parent)), f.parent.relative_to(args.root).as_posix())
        for pattern in ("*/run.json", "*/*/run.json")
        for f in sorted(args.root.glob(pattern))
    ]
    table = render([r for run in runs if (r := row(*run)) is not None])
    chooser_rows = [r for run in runs if (r := choosers(*run)) is not None]
    if chooser_rows:
        table += "\nThe same candidates, chosen four ways:\n\n" + render_choosers(chooser_rows)
    (args.root / "table.md").write_text(table)
    print(table, end="")


if __name__ == "__main__":
    main()
