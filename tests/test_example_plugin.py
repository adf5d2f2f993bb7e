"""The example third-party plugin package installs with pip and plugs in through the
`reason` entry point, exactly like a plugin from PyPI would."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "plugin-format-verifier"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(EXAMPLE)],
        check=True, capture_output=True, timeout=300,
    )
    return {**os.environ, "PYTHONPATH": str(target)}


def reason(env, *args):
    return subprocess.run([sys.executable, "-c", "from reason.cli import main; main()", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_plugin_is_listed_with_its_version_and_hooks(installed):
    result = reason(installed, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugin = next(p for p in json.loads(result.stdout) if p["name"] == "format")
    assert plugin["version"] == "0.1.0" and not plugin["builtin"] and plugin["error"] is None
    assert plugin["registers"] == {"verifier": ["format"]}
    assert set(plugin["hooks"]) == {"reason_register_verifiers", "reason_on_event", "reason_register_commands"}
    assert plugin["options"] == {"verifier": {"format": [{
        "name": "number_score", "type": "float in [0, 1]", "default": 0.5,
        "help": "score of a step with a number but no boxed answer", "alias": "number_score",
    }]}}


def test_plugin_command_and_verifier_work(installed):
    assert reason(installed, "format-stats").stdout.strip() == "paths scored: 0"
    code = (
        "import sys; sys.path.insert(0, 'tests'); from scripted import ScriptedBackend;"
        "import reason; s = reason.Runtime(reason.Config(search='best-of-n', n=2, verifier='format'),"
        " backend=ScriptedBackend()).solve('q'); print(s.candidates[0].step_scores)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=installed,
                         cwd=Path(__file__).parent.parent, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(0.2, 1.0)"
    bad = subprocess.run([sys.executable, "-c", "from reason.cli import main; main()", "solve", "--verifier", "format",
                          "-o", "format.number_score=2", "q"], capture_output=True, text=True, env=installed, timeout=300)
    assert bad.returncode == 2
    assert "-o format.number_score=2: must be a number in [0, 1] (an option of verifier format)" in bad.stderr
