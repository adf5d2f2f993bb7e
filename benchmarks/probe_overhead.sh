#!/usr/bin/env bash
# What the probe verifier adds to a best-of-8 run on the transformers backend (issue 26).
#
#   bash benchmarks/probe_overhead.sh     # ~40 min on a 2-core CPU; resumable
#
# Three arms of one eval (MultiArith first 8, the default model, T=0.8, seed 0, 320 tokens,
# the settings of the quality table): self-consistency@8 without a verifier (the same 8
# samples per problem, from the same seeds, as best-of-8), best-of-8 weighted by the probe
# on the states the backend kept while sampling (the default), and the same with
# -o probe.capture=false (the verifier runs the policy over each path again, as it must on
# vLLM). Each arm runs its first 4 problems, then every arm its last 4 in reverse order,
# so drift on a noisy machine falls on all of them. Prints the wall-time ratios and writes
# benchmarks/results/probe_overhead/summary.json.
set -euo pipefail
cd "$(dirname "$0")/.."
REASON=${REASON:-.venv/bin/reason}
OUT=benchmarks/results/probe_overhead
COMMON=(--dataset multiarith --backend transformers -o threads=2 --model qwen2.5-coder-0.5b --temperature 0.8
        --seed 0 --step-tokens 64 --max-tokens 320 --n 8 --quiet --no-plot)
declare -A ARM=(
    [none]="--search self-consistency --verifier none"
    [probe]="--search best-of-n --weighted --verifier probe"
    [probe-reread]="--search best-of-n --weighted --verifier probe -o probe.capture=false"
)
for limit in 4 8; do
    order=(none probe probe-reread)
    [[ $limit == 8 ]] && order=(probe-reread probe none)
    for arm in "${order[@]}"; do
        # shellcheck disable=SC2086  # the arm's flags are words
        "$REASON" eval "${COMMON[@]}" ${ARM[$arm]} --limit "$limit" --out "$OUT/$arm" --resume
    done
done
.venv/bin/python - "$OUT" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
arms = {}
for arm in ("none", "probe", "probe-reread"):
    summary = json.loads((out / arm / "summary.json").read_text())  # reason eval's, over all 8 problems
    arms[arm] = {key: summary[key] for key in ("problems", "accuracy")}
    arms[arm]["seconds_per_problem"] = round(summary["seconds_per_problem"], 2)
base = arms["none"]["seconds_per_problem"]
for arm in arms.values():
    arm["ratio_to_none"] = round(arm["seconds_per_problem"] / base, 3)
summary = {"command": "bash benchmarks/probe_overhead.sh", "arms": arms}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
PY
