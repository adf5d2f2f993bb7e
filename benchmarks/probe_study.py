"""What a probe head can do for choosing among candidates, cross-validated by problem on
GSM8K *train* rollouts (issue 26): which pooling, penalty and training target, and which
vote rule, against the plain majority vote on the same samples. Nothing here reads a
test split.

    cd benchmarks/results/learn/rollouts-seed1 && gunzip -k trajectories.jsonl.gz && cd -
    reason learn features benchmarks/results/learn/rollouts-seed1 --layers 8,12,16
    .venv/bin/python benchmarks/probe_study.py benchmarks/results/learn/rollouts-seed1 \
        --out benchmarks/results/learn/study-seed1

Per head: held-out candidate AUROC (pooled and within problems), step AUROC, and the
accuracy of each rule. Rules: ``maj`` (the vote), ``p^g`` (the answer whose candidates'
calibrated probabilities raised to ``g`` sum highest: g=1 is best-of-N's weighted vote,
large g the top score) and ``learned`` (a logistic regression on the probe's logit and the
answer's vote share, fitted on the other folds; the answer with the highest mean
prediction wins). ``+won/-lost`` count the problems a rule gets right where the vote is
wrong, and the reverse: with ~190 problems, a handful either way is noise.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from reason.answers import group_answers
from reason.plugins.learn.train import (
    Candidate,
    Problem,
    cross_validate,
    fit_linear,
    folds,
    load_problems,
    platt,
    quality,
)

STORED = (8, 12, 16)
POWERS = (0.5, 1, 2, 4, 16)


def choose(problem: Problem, groups: list[int | None], weights: list[float], mean: bool = False) -> bool:
    """Whether the answer with the largest total (or mean) weight is right."""
    totals: dict[int, list[float]] = {}
    for group, weight in zip(groups, weights):
        if group is not None:
            totals.setdefault(group, []).append(weight)
    if not totals:
        return False
    winner = max(totals, key=lambda g: sum(totals[g]) / (len(totals[g]) if mean else 1))
    return any(s.correct for s, g in zip(problem.samples, groups) if g == winner)


def rules(problems: list[Problem], held: list[Any]) -> dict[str, list[bool]]:
    final = [[values[-1] for values in per] for per in held]
    groups = [group_answers([s.answer for s in p.samples]) for p in problems]
    cal = platt([z for f in final for z in f], [s.correct for p in problems for s in p.samples])

    def p(z: float) -> float:
        return 1 / (1 + math.exp(-(cal["a"] * z + cal["b"])))

    out = {"maj": [choose(pr, g, [1.0] * len(g)) for pr, g in zip(problems, groups)]}
    for power in POWERS:
        out[f"p^{power:g}"] = [choose(pr, g, [p(z) ** power for z in f]) for pr, g, f in zip(problems, groups, final)]
    out["learned"] = learned_vote(problems, groups, final)
    return out


def learned_vote(problems: list[Problem], groups: list[list[int | None]], final: list[list[float]]) -> list[bool]:
    """Logistic regression on (logit, vote share), fitted on the other folds."""

    def features(g: list[int | None], f: list[float]) -> torch.Tensor:
        share = [sum(1 for h in g if h == x) / len(g) if x is not None else 0.0 for x in g]
        return torch.tensor([[z, s] for z, s in zip(f, share)])

    right: list[bool] = [False] * len(problems)
    for fold in folds(problems, 5, seed=1):
        train = [i for i in range(len(problems)) if i not in fold]
        x = torch.cat([features(groups[i], final[i]) for i in train])
        y = torch.tensor([float(s.correct) for i in train for s in problems[i].samples])
        head = fit_linear(x, y, 1e-4)
        with torch.inference_mode():
            for i in fold:
                right[i] = choose(problems[i], groups[i], head(features(groups[i], final[i])).tolist(), mean=True)
    return right


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="rollouts with trajectories.jsonl and features at layers 8,12,16")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    problems = load_problems(args.run_dir, STORED)
    heads = [
        Candidate("linear", layers, pooling, weight_decay=1e-2, centred=centred)
        for layers in ((16,), STORED)
        for pooling in ("mean", "mean+step")
        for centred in (False, True)
    ]
    results = []
    for candidate in heads:
        start = time.perf_counter()
        held = cross_validate(candidate, problems, STORED)["logits"]
        metrics = {k: v for k, v in quality(problems, held).items() if not k.endswith("@8")}
        chosen = rules(problems, held)
        vote = chosen["maj"]
        row = {
            "head": candidate.name,
            **metrics,
            "rules": {
                name: {
                    "accuracy": sum(r) / len(r),
                    "won": sum(a and not m for a, m in zip(r, vote)),
                    "lost": sum(m and not a for a, m in zip(r, vote)),
                }
                for name, r in chosen.items()
            },
            "seconds": round(time.perf_counter() - start, 1),
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study.json").write_text(json.dumps({"problems": len(problems), "heads": results}, indent=1) + "\n")
    names = list(results[0]["rules"])
    lines = [
        f"{len(problems)} GSM8K-train problems, 8 samples each, 5 folds by problem; accuracy of each rule "
        "(+won/-lost against the vote)\n",
        "| head | AUROC | within | step AUROC | " + " | ".join(names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for row in results:
        cells = [f"{row['rules'][n]['accuracy']:.3f} (+{row['rules'][n]['won']}/-{row['rules'][n]['lost']})" for n in names]
        lines.append(
            f"| {row['head']} | {row['candidate_auroc']:.3f} | {row['candidate_auroc_within']:.3f} | "
            f"{row['step_auroc']:.3f} | " + " | ".join(cells) + " |"
        )
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
