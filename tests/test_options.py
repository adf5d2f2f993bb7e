"""Typed options: declarations, the run's check, `reason plugins`, the README reference."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from scripted import ScriptedBackend

import reason
from reason import Config, Option, Runtime, UsageError
from reason.options import README_END, README_START, markdown
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
        (Option(int, minimum=1), "3", 3),
        (Option(float, maximum=1), 0.25, 0.25),
        (Option(bool), "off", False),
        (Option(str, choices=("visits", "value")), "Value", "value"),
        (Option(list), (1, 2), [1, 2]),
        (Option(int, 7), None, None),
    ],
)
def test_an_option_converts_what_it_accepts(option, value, expected):
    assert option.parse(value, "k") == expected


@pytest.mark.parametrize(
    "option, value, message",
    [
        (Option(int, minimum=1), 0, "-o k=0: must be a whole number >= 1"),
        (Option(int), 2.5, "-o k=2.5: must be a whole number"),
        (Option(int), True, "-o k=True: must be a whole number"),
        (Option(float, minimum=0, maximum=1), 2, "-o k=2: must be a number in [0, 1]"),
        (Option(str, choices=("visits", "value")), "best", "-o k='best': must be one of visits, value"),
        (Option(list), "abc", "-o k='abc': must be a list, e.g. [1, 2]"),
        (Option(bool), "maybe", "-o k='maybe': must be true or false"),
    ],
)
def test_a_bad_value_names_the_option_and_what_it_expects(option, value, message):
    with pytest.raises(UsageError) as raised:
        option.parse(value, "k")
    assert str(raised.value) == message


def test_an_option_type_outside_the_five_is_refused():
    with pytest.raises(TypeError, match="type must be one of int, float, bool, str, list"):
        Option(dict)


class Knobs(reason.Splitter):
    class Options(reason.Options):
        prefix = "knobs_"
        knob = Option(int, 3, minimum=0, help="a knob")
        dial = Option(str, None, alias="old_dial", help="a dial")

    options: Options

    def step_params(self, params):
        return params

    def split(self, text):
        return [text]


def test_a_component_gets_its_options_parsed_with_their_defaults():
    assert Knobs(Config()).options.knob == 3 and Knobs(Config()).options.dial is None
    assert Knobs(Config(), options=Knobs.Options(knob="5")).options.knob == 5
    assert Knobs.Options(knob=5) == Knobs.Options(knob="5") and hash(Knobs.Options(knob=5)) == hash(Knobs.Options(knob="5"))
    with pytest.raises(UsageError, match="unknown option other; it takes knob, dial"):
        Knobs.Options(other=1)
    options = Knobs.Options(knob=1)
    with pytest.raises(AttributeError, match="options are immutable"):
        options.knob = 2
    assert options.replace(knob=2).knob == 2 and options.knob == 1


def test_options_are_named_by_component_and_the_flat_names_still_work():
    def knob(raw):
        return Knobs.Options.from_run(raw, "knobs").knob

    assert knob({"knobs_knob": 4}) == 4  # the flat name of earlier releases: prefix + name
    assert knob({"knobs": {"knob": 5}, "knobs_knob": 4}) == 5  # a recipe's [options.knobs] wins over it
    assert knob({"knobs.knob": 6, "knobs": {"knob": 5}}) == 6  # and -o knobs.knob=6 over both
    assert knob({"other.knob": 7, "knob": 8}) == 3  # another component's, and no flat name of this one
    assert Knobs.Options.from_run({"old_dial": "x"}, "knobs").dial == "x"  # an explicit alias
    with pytest.raises(UsageError, match=r"-o knobs.knb=1: knobs has no option knb; it takes knob, dial"):
        Knobs.Options.from_run({"knobs.knb": 1}, "knobs")
    with pytest.raises(UsageError, match=r"-o knobs.knob=-1: must be a whole number >= 0"):
        Knobs.Options.from_run({"knobs": {"knob": -1}}, "knobs")


def test_a_prefix_names_the_options_its_class_declares():
    """HumanEval's options: its data folder (no prefix) and the sandbox's (sandbox_*)."""
    registry = load_plugins()
    humaneval = registry.declared_options("dataset", "humaneval")
    aliases = {o.name: humaneval.alias(o) for o in humaneval.declared}
    assert aliases["data_dir"] == "data_dir" and aliases["timeout"] == "sandbox_timeout"
    prm = registry.declared_options("verifier", "prm")
    assert {prm.alias(o) for o in prm.declared} >= {"prm_model", "prm_format", "prm_batch_size", "prm_kv_cache_tokens"}


def test_every_built_in_component_declares_its_options_on_its_class():
    registry = load_plugins()
    for kind in KINDS:
        for name in registry.names(kind):
            assert registry.declared_options(kind, name) is not None, f"{kind} {name} has no Options class"


def test_the_search_fields_of_earlier_releases_are_the_policies_options():
    config = Config().replace(search="beam", beam_width=2, max_steps=3, weighted=True)
    assert config.options == {"beam_width": 2, "max_steps": 3, "weighted": True}
    with Runtime(config, backend=ScriptedBackend()) as rt:
        policy = rt.plan().policy(rt.registry)
    assert (policy.options.width, policy.options.max_steps, policy.options.weighted) == (2, 3, True)


# -- the run's check -------------------------------------------------------------------


def test_an_unknown_option_is_refused_listing_the_valid_ones():
    result = run("solve", "-o", "no_such_option=1", "q")
    assert result.returncode == 2 and result.stdout == ""
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("reason: error: -o no_such_option=1: unknown option no_such_option;")
    assert "e.g. -o transformers.NAME=VALUE" in line
    assert "backend transformers: max_batch, admit_min, prefix_cache_tokens, threads, continuous" in line


def test_an_option_of_a_component_the_run_does_not_use_names_that_component(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('search = "best-of-n"\nverifier = "confidence"\n\n[options]\nprm_model = "/models/prm"\n')
    result = run("solve", "--recipe", str(recipe), "q")
    assert result.returncode == 2
    assert (
        "-o prm_model='/models/prm': prm_model is an option of verifier prm, which this run does not use "
        "(it runs backend transformers, search best-of-n, splitter step, verifier confidence)"
    ) in result.stderr
    recipe.write_text('search = "best-of-n"\n\n[options.prm]\nmodel = "/models/prm"\n')
    result = run("solve", "--recipe", str(recipe), "q")
    assert "[options.prm]: verifier prm is not part of this run (it runs backend transformers," in result.stderr
    result = run("solve", "-o", "prn.model=x", "q")
    assert "-o prn.model='x': no component is named prn; this run has transformers, best-of-n, step, confidence" in result.stderr


def test_a_bad_value_is_refused_naming_its_component():
    result = run("solve", "--search", "beam", "-o", "beam.lookahead=-1", "q")
    assert result.returncode == 2
    assert "-o beam.lookahead=-1: must be a whole number >= 0 (an option of search beam)" in result.stderr
    result = run("solve", "--search", "beam", "-o", "lookahead=-1", "q")
    assert "-o lookahead=-1: must be a whole number >= 0 (an option of search beam)" in result.stderr


def test_a_run_takes_the_options_of_every_component_it_uses():
    config = Config(search="beam", verifier="confidence", reflect=("marco",), options={"lookahead": 1, "marco": {"max": 2}})
    with Runtime(config, backend=ScriptedBackend()) as rt:
        (marco,) = [trigger for _, trigger in rt.reflections(rt.config)]
        assert marco.options.max == 2
    with pytest.raises(UsageError, match=r"\[options.marco\]: reflection marco is not part of this run"):
        Runtime(config.replace(reflect=()), backend=ScriptedBackend())


def test_a_component_without_options_takes_none():
    class Plain(reason.Verifier):
        def score(self, requests):
            return [reason.Score(step_scores=[0.5] * len(r.steps)) for r in requests]

    registry = load_plugins()
    registry.add("verifier", "plain", Plain)
    with pytest.raises(UsageError, match=r"-o plain.weight=1: plain has no option weight; it takes none"):
        Runtime(Config(verifier="plain", options={"plain.weight": 1}), registry=registry, backend=ScriptedBackend())


def test_sub_policies_options_count_as_the_runs():
    table = [{"max_difficulty": 1.0, "search": "beam", "n": 2}]
    config = Config(search="compute-optimal", n=2, options={"table": table, "lookahead": 1})
    with Runtime(config, backend=ScriptedBackend()) as rt:
        assert rt.solve("q").meta["strategy"] == "beam"
    with pytest.raises(UsageError, match="lookahead is an option of search beam"):
        Runtime(config.replace(options={"table": [{"max_difficulty": 1.0, "search": "dvts"}]}), backend=ScriptedBackend())


def test_dataset_options_are_accepted_by_any_run():
    Runtime(Config(options={"data_dir": "/data", "question_field": "q", "gsm8k.data_dir": "/d"}), backend=ScriptedBackend()).close()


# -- what people read ------------------------------------------------------------------


def test_reason_plugins_shows_every_components_options():
    result = run("plugins")
    assert result.returncode == 0, result.stderr
    assert re.search(r"-o beam.lookahead=int >= 0 +score each new step .* \(default 0\)", result.stdout)
    assert re.search(r"-o mcts.final=top\|vote\|weighted-vote\|visits\|value +the answer among rollouts: .* \(default \"weighted-vote\"\)", result.stdout)
    assert "no options: confidence" in result.stdout
    listed = json.loads(run("plugins", "--json").stdout)
    search = next(p for p in listed if p["name"] == "reason.plugins.search")
    assert search["options"]["search"]["greedy"] == []
    assert {
        "name": "probe", "type": "int >= 1", "default": 2, "help": "cheap samples that measure a problem's difficulty", "alias": "probe"
    } in search["options"]["search"]["compute-optimal"]


def test_the_readme_option_reference_is_generated_from_the_declarations():
    text = README.read_text()
    block = text[text.index(README_START) : text.index(README_END) + len(README_END)]
    assert block == markdown(load_plugins()), "README.md's option reference is stale: run .venv/bin/python scripts/options_doc.py"


def test_every_option_the_readme_mentions_is_declared():
    registry = load_plugins()
    names = set()
    for kind in KINDS:
        for name in registry.names(kind):
            cls = registry.declared_options(kind, name)
            names |= {f"{name}.{o.name}" for o in cls.declared} | {cls.alias(o) for o in cls.declared}
    mentioned = set(re.findall(r"-o '?([a-z_.-]+)=", README.read_text()))
    mentioned -= {"key", "format.number_score"}  # the syntax; the example plugin's option (tests/test_example_plugin.py)
    assert mentioned and mentioned <= names, sorted(mentioned - names)


def test_an_injected_backend_is_named_by_its_class():
    with pytest.raises(UsageError, match=r"max_batch is an option of backend transformers, which this run does not use \(it runs backend ScriptedBackend,"):
        Runtime(Config(options={"max_batch": 2}), backend=ScriptedBackend())
    with pytest.raises(UsageError, match=r"backend transformers is not part of this run \(it runs backend ScriptedBackend,"):
        Runtime(Config(options={"transformers.max_batch": 2}), backend=ScriptedBackend())


def test_a_none_option_is_unset_not_unknown():
    Runtime(Config(options={"no_such_option": None}), backend=ScriptedBackend()).close()


def test_every_shipped_recipe_passes_the_runs_check():
    recipes = sorted((Path(__file__).resolve().parent.parent / "examples" / "recipes").glob("*.toml"))
    assert len(recipes) >= 9
    for recipe in recipes:
        Runtime(Config.from_recipe(recipe), backend=ScriptedBackend()).close()


@pytest.mark.parametrize(
    "build, param",
    [
        (lambda: Config(n=0), "n"),
        (lambda: Runtime(Config(search="nope"), backend=ScriptedBackend()), "search"),
        (lambda: Runtime(Config(reflect=("nope",)), backend=ScriptedBackend()), "reflect"),
        (lambda: Runtime(Config(search="beam", options={"beam": {"lookahead": -1}}), backend=ScriptedBackend()), "options.beam.lookahead"),
        (lambda: Runtime(Config(search="beam", options={"beam.lookahed": 1}), backend=ScriptedBackend()), "options.beam.lookahed"),
        (lambda: Runtime(Config(options={"no_such": 1}), backend=ScriptedBackend()), "options.no_such"),
    ],
)
def test_a_usage_error_names_the_parameter_it_is_about(build, param):
    """What `reason serve` reports as the request field at fault, without reading the message."""
    with pytest.raises(UsageError) as raised:
        build()
    assert raised.value.param == param


def test_a_lazy_factory_has_its_targets_class_attributes():
    from reason.registry import lazy

    factory = lazy("reason.plugins.search.greedy:Greedy")
    assert factory.reads_n is False and factory.Options is reason.Options
    with pytest.raises(AttributeError):
        factory.__wrapped__  # noqa: B018 -- protocols do not import the target
