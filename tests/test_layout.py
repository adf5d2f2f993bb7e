"""The package stays readable: small modules (a module that grows past 500 lines is split
by concept, as serve's app, server and formats were)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIMIT = 500
MODULES = sorted(p for top in ("core", "plugins", "sandboxes") for p in (REPO / top).rglob("*.py"))


def test_the_package_has_modules():
    assert len(MODULES) > 50


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_over_500_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= LIMIT, f"{path.relative_to(REPO)} has {lines} lines; split it by concept"
