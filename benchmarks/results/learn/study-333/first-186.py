"""Train-CV (GSM8K train only) of the product's linear heads with `last` pooling vs `mean`."""
import sys, time, json
from pathlib import Path
import torch
import attrs
from reason.plugins.learn.train import Candidate, load_problems, cross_validate
torch.set_num_threads(1)
run = Path(sys.argv[1]); stored = (8, 12, 16)
problems = load_problems(run, stored)
cands = [Candidate("linear", (16,), "mean", weight_decay=1e-2), Candidate("linear", (16,), "last", weight_decay=1e-2),
         Candidate("linear", (16,), "last", weight_decay=1e-2, prefixes=False), Candidate("linear", (16,), "last", weight_decay=1e-3),
         Candidate("linear", (12,), "last", weight_decay=1e-2), Candidate("linear", (8, 12, 16), "last", weight_decay=1e-2),
         Candidate("linear", (8, 12, 16), "mean", weight_decay=1e-2)]
for c in cands:
    t = time.time()
    r = cross_validate(c, problems, stored)
    print(json.dumps({"name": c.name, **{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items() if k != "logits"}, "s": round(time.time() - t)}), flush=True)
