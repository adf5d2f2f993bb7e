#!/usr/bin/env bash
# Run the whole suite. pytest exits 5 when it collected nothing; that is reported, not
# hidden: the suite always has tests, so "no tests" means something is broken.
set -uo pipefail
PY=${1:-.venv/bin/python}
"$PY" -m pytest -ra --durations=15 --timeout=900
status=$?
if [ "$status" -eq 5 ]; then
    echo "run-tests: pytest collected no tests" >&2
fi
exit "$status"
