"""Typed options: declarations, the run's check, `reason plugins`, the README reference."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import structlog
from scripted import ScriptedBackend

import reason
from reason import Config, Option, Runtime, UsageError
from reason.option_docs import README_END, README_START, markdown
from reason.registry import KINDS, load_plugins

README = Path(__file__).resolve().parent.parent / "README.md"


def run(*args):
    return subprocess.run(
        [sys.executable, "-c", "from reason.cli import main; main()", *args], capture_output=True, text=True, timeout=300
    )


# -- one declaration -------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value, expected",
    [
        (Option("k", int, minimum=1), "3", 3),
        (Option("k", float, maximum=1), 0.25, 0.25),
        (Option("k", bool), "off", False),
        (Option("k", str, choices=("visits", "value")), "Value", "value"),
        (Option("k", list), (1, 2), [1, 2]),
        (Option("k", int, 7), None, None),
    ],
)
def test_an_option_converts_what_it_accepts(option, value, expected):
    assert option.parse(value) == expected


@pytest.mark.parametrize(
    "option, value, message",
    [
        (Option("k", int, minimum=1), 0, "-o k=0: must be a whole number >= 1"),
        (Option("k", float, minimum=0, maximum=1), 2, "-o k=2: must be a number in [0, 1]"),
        (Option("k", str, choices=("visits", "value")), "best", "-o k='best': must be one of visits, value"),
        (Option("k", list), "abc", "-o k='abc': must be a list, e.g. [1, 2]"),
        (Option("k", bool), "maybe", "-o k='maybe': must be true or false"),
    ],
)
def test_a_bad_value_names_the_option_and_what_it_expects(option, value, message):
    with pytest.raises(UsageError) as raised:
        option.parse(value)
    assert str(raised.value) == message


def test_an_option_type_outside_the_five_is_refused():
    with pytest.raises(TypeError, match="type must be one of int, float, bool, str, list"):
        Option("k", dict)


def test_a_component_reads_declared_options_with_their_defaults():
    class Knobs(reason.Splitter):
        options = (Option("knob", int, 3, minimum=0),)

        def step_params(self, params):
            return params

        def split(self, text):
            return [text]

    assert Knobs(Config()).option("knob") == 3
    assert Knobs(Config(options={"knob": "5"})).option("knob") == 5
    with pytest.raises(LookupError, match="Knobs reads option 'other' but does not declare it"):
        Knobs(Config()).option("other")


def test_every_built_in_component_declares_its_options():
    registry = load_plugins()
    for kind in KINDS:
        for name in registry.names(kind):
            assert registry.declared_options(kind, name) is not None, f"{kind} {name} declares no options"


# -- the run's check -------------------------------------------------------------------


def test_an_unknown_option_is_refused_listing_the_valid_ones():
    result = run("solve", "-o", "no_such_option=1", "q")
    assert result.returncode == 2 and result.stdout == ""
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("reason: error: -o no_such_option=1: unknown option no_such_option;")
    assert "backend transformers: max_batch, admit_min, prefix_cache_tokens, threads, continuous" in line
    assert "any dataset: " in line and "data_dir" in line


def test_an_option_of_a_component_the_run_does_not_use_names_that_component(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('search = "best-of-n"\nverifier = "confidence"\n\n[options]\nprm_model = "/models/prm"\n')
    result = run("solve", "--recipe", str(recipe), "q")
    assert result.returncode == 2
    assert (
        "-o prm_model='/models/prm': prm_model is an option of verifier prm, which this run does not use "
        "(it runs backend transformers, search best-of-n, splitter step, verifier confidence)"
    ) in result.stderr


def test_a_bad_value_is_refused_naming_its_component():
    result = run("solve", "--search", "beam", "-o", "lookahead=-1", "q")
    assert result.returncode == 2
    assert "-o lookahead=-1: must be a whole number >= 0 (an option of search beam)" in result.stderr


def test_a_run_takes_the_options_of_every_component_it_uses():
    config = Config(search="beam", verifier="confidence", reflect=("marco",), options={"lookahead": 1, "marco_max": 2})
    Runtime(config, backend=ScriptedBackend()).close()
    with pytest.raises(UsageError, match="marco_max is an option of reflection marco, which this run does not use"):
        Runtime(config.replace(reflect=()), backend=ScriptedBackend())


def test_sub_policies_options_count_as_the_runs():
    table = [{"max_difficulty": 1.0, "search": "beam", "n": 2}]
    config = Config(search="compute-optimal", n=2, options={"table": table, "lookahead": 1})
    with Runtime(config, backend=ScriptedBackend()) as rt:
        assert rt.solve("q").meta["strategy"] == "beam"
    with pytest.raises(UsageError, match="lookahead is an option of search beam"):
        Runtime(config.replace(options={"table": [{"max_difficulty": 1.0, "search": "dvts"}]}), backend=ScriptedBackend())


def test_dataset_options_are_accepted_by_any_run():
    Runtime(Config(options={"data_dir": "/data", "question_field": "q"}), backend=ScriptedBackend()).close()


@pytest.fixture
def structlog_defaults():
    """structlog as an application that never configured it (another test may have run
    the CLI's configure, whose level filter would drop the debug line)."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    yield
    structlog.configure(**saved)


def test_an_undeclared_component_makes_the_key_check_lenient_with_a_debug_log(structlog_defaults):
    class Legacy(reason.Verifier):  # written before declarations: reads with config.option
        def score(self, requests):
            weight = self.config.option("legacy_weight", 0.5, float)
            return [reason.Score(step_scores=[weight] * len(r.steps)) for r in requests]

    registry = load_plugins()
    registry.add("verifier", "legacy", Legacy)
    config = Config(verifier="legacy", search="best-of-n", n=2, options={"legacy_weight": 0.25})
    with structlog.testing.capture_logs() as logs, Runtime(config, registry=registry, backend=ScriptedBackend()) as rt:
        assert rt.solve("q").score == 0.25
    entries = [e for e in logs if e["event"].startswith("options not checked")]
    assert entries  # once per check: when the Runtime is built and when a solve starts
    for entry in entries:
        assert entry["log_level"] == "debug" and entry["keys"] == ["legacy_weight"] and entry["components"] == ["verifier legacy"]
    with pytest.raises(UsageError, match="must be a whole number >= 0"):  # declared keys are still checked
        Runtime(config.replace(options={"lookahead": -1}, search="beam"), registry=registry, backend=ScriptedBackend())


# -- what people read ------------------------------------------------------------------


def test_reason_plugins_shows_every_components_options():
    result = run("plugins")
    assert result.returncode == 0, result.stderr
    assert re.search(r"-o lookahead=int >= 0 +score each new step .* \(default 0\)", result.stdout)
    assert re.search(r"-o final=top\|vote\|weighted-vote\|visits\|value +the answer among rollouts: .* \(default \"weighted-vote\"\)", result.stdout)
    assert "no options: confidence" in result.stdout
    listed = json.loads(run("plugins", "--json").stdout)
    search = next(p for p in listed if p["name"] == "reason.plugins.search")
    assert search["options"]["search"]["greedy"] == []
    assert {"name": "probe", "type": "int >= 1", "default": 2, "help": "cheap samples that measure a problem's difficulty"} in (
        search["options"]["search"]["compute-optimal"]
    )


def test_the_readme_option_reference_is_generated_from_the_declarations():
    text = README.read_text()
    block = text[text.index(README_START) : text.index(README_END) + len(README_END)]
    assert block == markdown(load_plugins()), "README.md's option reference is stale: run .venv/bin/python scripts/options_doc.py"


def test_every_option_the_readme_mentions_is_declared():
    registry = load_plugins()
    names = {o.name for kind in KINDS for name in registry.names(kind) for o in registry.declared_options(kind, name) or ()}
    mentioned = set(re.findall(r"-o '?([a-z_]+)=", README.read_text())) - {"key"}  # "-o key=value" is the syntax
    assert mentioned and mentioned <= names, sorted(mentioned - names)


def test_an_injected_backend_is_named_by_its_class():
    with pytest.raises(UsageError, match=r"max_batch is an option of backend transformers, which this run does not use \(it runs backend ScriptedBackend,"):
        Runtime(Config(options={"max_batch": 2}), backend=ScriptedBackend())


def test_a_none_option_is_unset_not_unknown():
    Runtime(Config(options={"no_such_option": None}), backend=ScriptedBackend()).close()
