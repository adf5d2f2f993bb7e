"""The package builds without a warning and carries its data files.

Builds the wheel the way pip does for a user (an isolated build with the declared
setuptools), so a deprecated table in pyproject.toml or a data folder that is not a
package shows up here, not on a user's screen."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_builds_without_warnings_and_ships_its_data(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    # pip's own notes about its local index settings are the machine's, not the package's
    warnings = [line for line in output.splitlines() if "Warning" in line and "Location" not in line]
    assert not warnings, "\n".join(warnings)
    (wheel,) = tmp_path.glob("reason_runtime-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "reason/plugins/verifiers/probes/qwen2.5-coder-0.5b.safetensors" in names
    assert "reason/plugins/verifiers/probes/qwen2.5-coder-0.5b.json" in names
    assert any(name.startswith("reason/plugins/viewer/") and name.endswith(".js") for name in names)
    assert "reason/sandboxes/__init__.py" in names
