"""Centred linear heads on the 333 GSM8K-train problems (5 folds by problem): weighted
vote with calibrated p**g. Train only."""
import math, random, sys, time
from collections import defaultdict
from pathlib import Path
from reason.plugins.learn.train import load_problems, cross_validate, Candidate, platt
from reason.plugins.learn.heads import calibrated
from reason.answers import group_answers

problems = load_problems(Path(sys.argv[1]), (8, 12, 16))  # RUN: the 333 problems, features at L8-12-16

def vote(problem, per, cal, g):
    groups = group_answers([s.answer for s in problem.samples])
    tot = defaultdict(float); ok = {}
    for s, vals, grp in zip(problem.samples, per, groups):
        if s.answer is None: continue
        tot[grp] += calibrated(vals[-1], cal) ** g
        ok[grp] = s.correct
    return bool(tot) and ok[max(tot, key=tot.get)]

for cand in (Candidate("linear", (16,), "mean", weight_decay=1e-2, centred=True),
             Candidate("linear", (8, 12, 16), "mean", weight_decay=1e-2, centred=True),
             Candidate("linear", (16,), "mean+step", weight_decay=1e-2, centred=True)):
    t = time.time()
    res = cross_validate(cand, problems, (8, 12, 16))
    flat, labels = [], []
    for p, per in zip(problems, res["logits"]):
        for s, vals in zip(p.samples, per):
            flat += vals; labels += [s.correct] * len(vals)
    cal = platt(flat, labels)
    base = [vote(p, per, cal, 0) for p, per in zip(problems, res["logits"])]
    line = [cand.name, f"auroc {res['candidate_auroc']:.3f} within {res['candidate_auroc_within']:.3f}", f"maj {sum(base)/len(base):.3f}"]
    for g in (0.5, 1, 2, 4):
        v = [vote(p, per, cal, g) for p, per in zip(problems, res["logits"])]
        won = sum(a and not b for a, b in zip(v, base)); lost = sum(b and not a for a, b in zip(v, base))
        line.append(f"p^{g} {sum(v)/len(v):.3f} (+{won}/-{lost})")
    print(" | ".join(line), f"{time.time()-t:.0f}s", flush=True)
