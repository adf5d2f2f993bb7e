"""Weighted vote with score**alpha and path aggregations, on 333 GSM8K-train problems'
held-out (5-fold) logits of the shipped recipe (L16 mean linear wd=0.01). Train only."""
import math, random, sys, time
from collections import defaultdict
from pathlib import Path
from reason.plugins.learn.train import load_problems, cross_validate, Candidate, platt
from reason.answers import group_answers

t = time.time()
problems = load_problems(Path(sys.argv[1]), (8, 12, 16))  # RUN: the 333 problems, features at L8-12-16
print("loaded", len(problems), f"{time.time()-t:.0f}s", flush=True)
cand = Candidate("linear", (16,), "mean", weight_decay=1e-2)
res = cross_validate(cand, problems, (8, 12, 16))
print("cv", {k: v for k, v in res.items() if k != "logits"}, flush=True)
logits = res["logits"]
flat, labels = [], []
for p, per in zip(problems, logits):
    for s, vals in zip(p.samples, per):
        flat += vals; labels += [s.correct] * len(vals)
cal = platt(flat, labels)
print("platt", cal)
from reason.plugins.learn.heads import calibrated
sig = lambda z: calibrated(z, cal)

def agg(vals, how):
    ps = [sig(v) for v in vals]
    if how == "last": return ps[-1]
    if how == "min": return min(ps)
    if how == "mean": return sum(ps) / len(ps)
    if how == "prod": return math.prod(ps)

def correct_of(problem, per, how, alpha):
    groups = group_answers([s.answer for s in problem.samples])
    tot = defaultdict(float); ok = {}
    best = None
    for s, vals, g in zip(problem.samples, per, groups):
        if s.answer is None: continue
        sc = agg(vals, how)
        w = 1.0 if alpha == 0 else (sc ** alpha if alpha != math.inf else sc)
        if alpha == math.inf:
            if best is None or sc > best[0]: best = (sc, s.correct)
        else:
            tot[g] += w
        ok[g] = s.correct
    if alpha == math.inf:
        return bool(best and best[1])
    if not tot: return False
    g = max(tot, key=tot.get)
    return ok[g]

rows = {}
for how in ("last", "min", "mean", "prod"):
    for alpha in (0, 0.5, 1, 2, 3, 4, 6, 8, 16, math.inf):
        v = [correct_of(p, per, how, alpha) for p, per in zip(problems, logits)]
        rows[(how, alpha)] = v
        print(f"{how:5s} alpha={alpha:<5} acc={sum(v)/len(v):.3f}", flush=True)
base = rows[("last", 0)]
rng = random.Random(0)
for key in (("last", 1), ("last", 2), ("last", 4), ("min", 2), ("mean", 2)):
    d = [a - b for a, b in zip(rows[key], base)]
    boots = sorted(sum(rng.choice(d) for _ in d) / len(d) for _ in range(2000))
    print(key, f"diff={sum(d)/len(d):+.3f} 95%[{boots[50]:+.3f},{boots[1950]:+.3f}]")
