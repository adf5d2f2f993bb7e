"""`reason solve --search beam --verifier prm ...` end to end on the embedded model: the
policy is SmolLM2 and so is the "PRM" (its converted HF directory, generic format)."""

import json
import subprocess
import sys

import pytest

from reason.plugins.backends.models import converted_dir, ensure_converted, resolve_model


def run(*args):
    return subprocess.run(
        [sys.executable, "-c", "from reason.cli import main; main()", *args],
        capture_output=True, text=True, timeout=900,
    )


def last_json(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, stdout
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def prm_dir():
    source = resolve_model("smollm2")
    ensure_converted(source)
    return str(converted_dir(source))


@pytest.mark.model
@pytest.mark.timeout(900)
def test_beam_search_with_the_prm_verifier_from_the_cli(prm_dir, tmp_path):
    tree_file = tmp_path / "tree.json"
    result = run(
        "solve", "--search", "beam", "--verifier", "prm", "--prm-model", prm_dir, "--prm-format", "generic",
        "--prm-agg", "min", "--n", "2", "--beam-width", "2", "--max-steps", "2", "--max-tokens", "40",
        "--step-tokens", "16", "--seed", "0", "-o", "prm_batch_size=2", "--json", "-q", "--tree", str(tree_file),
        "What is 2 + 3?",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = last_json(result.stdout)
    assert out["config"]["verifier"] == "prm" and out["config"]["aggregation"] == "min"
    assert out["config"]["options"]["prm.model"] == prm_dir  # the --prm-model flag sets -o prm.model
    assert out["candidates"] and out["usage"]["verifier_calls"] >= 1
    for candidate in out["candidates"]:
        steps = candidate["step_scores"]
        assert steps and all(0.0 <= s <= 1.0 for s in steps)
        assert candidate["score"] == pytest.approx(min(steps))
    tree = json.loads(tree_file.read_text())
    scored = [node for node in tree["nodes"] if "prm" in node["scores"]]
    assert scored and all(0.0 <= node["scores"]["prm"] <= 1.0 for node in scored)


@pytest.mark.model
def test_a_missing_prm_model_is_a_usage_error():
    result = run("solve", "--verifier", "prm", "--prm-model", "/no/such/prm", "--n", "1", "--max-tokens", "8", "q")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "/no/such/prm" in result.stderr
