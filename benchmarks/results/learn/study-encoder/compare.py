"""Does the ReProbe-style encoder choose better than the linear head that ships?

Issue 26's last bar (weighted best-of-8 >= the vote + 4 points) is out of the linear
probe's reach on either head, and ReProbe's ablation finds its small encoder clearly
stronger than a linear probe. The 5-fold CV of the encoder over the 594 problems would
take ~3 hours on 2 cores, so this is one split, as in ``../study-594`` (b): heads fitted
on the joined rollouts' problems below 266 (262), scored on those from 266 on (332).
Both heads are judged by the raw sigmoid of their logits (no calibration: one split
gives no held-out logits to fit it on; on the shipped head, calibrating moved the
weighted vote by 0.2 points, see the closing note of 2026-12-07). Train split only.

    PYTHONPATH=. .venv/bin/python benchmarks/results/learn/study-encoder/compare.py [EPOCHS]
"""

import json
import sys
import time
from pathlib import Path

from reason.plugins.learn.heads import parameter_count
from reason.plugins.learn.train import Candidate, fit, load_problems, quality, score_problems

RUN = Path("benchmarks/results/learn/rollouts-seed1-all")
STORED = (8, 12, 16)
KEEP = ("candidate_auroc", "candidate_auroc_within", "problems_mixed", "step_auroc", "step_pr_auc", "maj@8", "weighted@8", "naive@8")


def number(problem):
    return int(problem.task_id.split("/")[-1])


def main(epochs):
    problems = load_problems(RUN, STORED)
    seen = [p for p in problems if number(p) < 266]
    unseen = [p for p in problems if number(p) >= 266]
    print(f"{len(problems)} problems: fit on {len(seen)} (below 266), scored on {len(unseen)}", file=sys.stderr)
    encoder = {"width": 128, "heads": 4, "epochs": epochs, "lr": 1e-3}
    for candidate in (
        Candidate("linear", (16,), "mean+step", weight_decay=0.01),  # the shipped recipe
        Candidate("encoder", (12,), config=encoder),  # reason learn train's default encoder
        Candidate("encoder", (16,), config=encoder),  # on the linear head's layer
    ):
        index = [STORED.index(layer) for layer in candidate.layers]
        start = time.perf_counter()
        head = fit(candidate, seen, index)
        fitted = time.perf_counter() - start
        logits = score_problems(head, candidate.kind, unseen, index, candidate.pooling)
        result = quality(unseen, logits)
        line = {"head": candidate.name, "parameters": parameter_count(head), **{k: result.get(k) for k in KEEP}}
        line |= {"fit_s": round(fitted), "score_s": round(time.perf_counter() - start - fitted)}
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4)
