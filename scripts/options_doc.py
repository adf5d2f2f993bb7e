"""Rewrite the README's option reference from the built-in components' declarations.

    .venv/bin/python scripts/options_doc.py          # rewrite README.md's generated block
    .venv/bin/python scripts/options_doc.py --check  # exit 1 when it is stale (what the test checks)

The block sits between the markers in :mod:`reason.options`; the rest of the README
is left alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

from reason.options import markdown, replace_block
from reason.registry import load_plugins

README = Path(__file__).resolve().parent.parent / "README.md"


def main(argv: list[str]) -> int:
    text = README.read_text()
    updated = replace_block(text, markdown(load_plugins()))
    if "--check" in argv:
        if updated != text:
            print(f"{README} is stale: run {Path(__file__).name} to regenerate its option reference", file=sys.stderr)
            return 1
        return 0
    if updated != text:
        README.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
