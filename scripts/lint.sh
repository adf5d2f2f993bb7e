#!/usr/bin/env bash
# ruff (lint and format) and mypy on the package: core/, plugins/ and sandboxes/.
# mypy reads the package as it is imported (`reason`, `reason.plugins`, ...), not as it
# is laid out: a tree of links in .venv/typecheck maps one onto the other.
set -euo pipefail
PY=${1:-.venv/bin/python}
case "$PY" in /*) ;; *) PY="$PWD/$PY" ;; esac  # mypy runs from the link tree below
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$PY" -m ruff check core plugins sandboxes
"$PY" -m ruff format --check core plugins sandboxes
tree="$root/.venv/typecheck"
rm -rf "$tree"
mkdir -p "$tree/reason"
for entry in core/*; do
    ln -s "$root/$entry" "$tree/reason/$(basename "$entry")"
done
ln -s "$root/plugins" "$tree/reason/plugins"
ln -s "$root/sandboxes" "$tree/reason/sandboxes"
(cd "$tree" && "$PY" -m mypy --config-file "$root/pyproject.toml" --cache-dir "$root/.venv/.mypy_cache" -p reason)
echo "lint: ruff and mypy clean"
