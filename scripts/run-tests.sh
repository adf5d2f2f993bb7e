#!/usr/bin/env bash
# Run the whole suite: ruff and mypy (scripts/lint.sh), then pytest; non-zero on any
# failure of either. pytest exits 5 when it collected no test: that is said loudly but is
# not a failure of the code under test.
set -uo pipefail
PY=${1:-.venv/bin/python}
bash "$(dirname "$0")/lint.sh" "$PY"
lint=$?
"$PY" -m pytest -ra --durations=15 --timeout=900
status=$?
if [ "$status" -eq 5 ]; then
    echo "run-tests: WARNING: pytest collected no tests" >&2
    status=0
fi
if [ "$lint" -ne 0 ]; then
    echo "run-tests: FAILED: ruff or mypy (scripts/lint.sh) found problems" >&2
    exit "$lint"
fi
exit "$status"
