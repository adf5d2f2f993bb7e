"""Does the head trained on 594 problems choose better than the one that ships (266)?

On the joined GSM8K-train rollouts (``../rollouts-seed1-all``, features at layers 8,12,16),
scored only on problems 266 and up, which the shipped head never saw (it was trained on
problems 0-265): (a) the shipped head; (b) the recipe RECIPE fitted on this set's problems
0-265 only (as much data as (a), other samples); (c) RECIPE cross-validated over all 594
(5 folds by problem: each fold trains on ~475). Weighted votes use the calibrated
probability, as the verifier does. Train split only.

    PYTHONPATH=. .venv/bin/python benchmarks/results/learn/study-594/compare.py OLD_HEAD.json "L16 mean 0.01"
"""

import json
import math
import sys
from pathlib import Path

from reason.plugins.learn.heads import calibrated, load_head
from reason.plugins.learn.train import (
    Candidate,
    cross_validate,
    fit,
    held_out_calibration,
    load_problems,
    quality,
    score_problems,
)

RUN = Path("benchmarks/results/learn/rollouts-seed1-all")
STORED = (8, 12, 16)


def number(problem):
    return int(problem.task_id.split("/")[-1])


def logit_of(p):
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


def calibrate(logits, calibration):
    """Logits whose sigmoid is the calibrated probability (what the weighted vote sums)."""
    return [[[logit_of(calibrated(v, calibration)) for v in values] for values in per] for per in logits]


def report(name, problems, logits):
    result = quality(problems, logits)
    keep = ("candidate_auroc", "candidate_auroc_within", "problems_mixed", "step_auroc", "maj@8", "weighted@8", "naive@8")
    print(json.dumps({"head": name, **{k: result[k] for k in keep}}))


def main(old_path, recipe):
    layers_text, pooling, wd = recipe.split()
    layers = tuple(int(x) for x in layers_text.lstrip("L").split("+"))
    candidate = Candidate("linear", layers, pooling, weight_decay=float(wd))
    index = [STORED.index(layer) for layer in layers]
    problems = load_problems(RUN, STORED)
    unseen = [p for p in problems if number(p) >= 266]
    seen = [p for p in problems if number(p) < 266]
    print(f"{len(problems)} problems; scored on {len(unseen)} (266 and up); (b) trains on {len(seen)}", file=sys.stderr)

    card = json.loads(Path(old_path).read_text())
    old, card = load_head(Path(old_path), card["policy"]["sha256"], card["policy"]["name"])
    old_index = [STORED.index(layer) for layer in card["features"]["layers"]]
    raw = score_problems(old, "linear", unseen, old_index, card["features"]["pooling"])
    report(f"(a) shipped: {card['name']}, 266 problems", unseen, calibrate(raw, card["calibration"]))

    head = fit(candidate, seen, index)
    raw = score_problems(head, "linear", unseen, index, pooling)
    # calibration from (b)'s own held-out logits would need a second CV; use the pooled Platt fit of (c)
    result = cross_validate(candidate, problems, STORED)
    calibration = held_out_calibration(problems, result["logits"])
    report(f"(b) {candidate.name}, this set's {len(seen)} problems below 266", unseen, calibrate(raw, calibration))
    held = [logits for p, logits in zip(problems, result["logits"]) if number(p) >= 266]
    report(f"(c) {candidate.name}, 5-fold CV over 594", unseen, calibrate(held, calibration))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
