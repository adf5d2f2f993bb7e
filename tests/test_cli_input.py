"""Bad input gets one clear line on stderr and exit code 2; recipes and flags combine."""

import subprocess
import sys

import pytest

from reason import Config
from reason.cli import config_from
from reason.errors import UsageError


def run(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-c", "from reason.cli import main; main()", *args],
        capture_output=True, text=True, input=stdin, timeout=300,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["solve", "--search", "nope", "q"], "unknown search 'nope'; available: "),
        (["solve", "--verifier", "nope", "q"], "unknown verifier 'nope'; available: "),
        (["solve", "--splitter", "ministep:x", "q"], None),
        (["solve", "--backend", "nope", "q"], "unknown backend 'nope'; available: "),
        (["solve", "--n", "0", "q"], "--n must be at least 1, got 0"),
        (["solve", "--temperature", "-1", "q"], "--temperature must be >= 0, got -1.0"),
        (["solve", "--top-p", "1.5", "q"], "--top-p must be in (0, 1], got 1.5"),
        (["solve", "   "], "the question is empty"),
        (["solve", "--model", "/nonexistent/model-dir", "q"], "/nonexistent/model-dir"),
        (["solve", "--recipe", "/nonexistent.toml", "q"], "recipe /nonexistent.toml does not exist"),
        (["solve", "-o", "novalue", "q"], "-o/--option takes key=value"),
        (["solve", "--task", "gsm8k"], "--task takes DATASET:ID"),
        # the prm plugin's own declaration lists the formats (the CLI does not repeat them)
        (["solve", "--verifier", "prm", "--prm-format", "nope", "q"], "-o prm.format='nope': must be one of auto, generic"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(args, message):
    result = run(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("reason: error: ")
    if message:
        assert message in lines[0]
    assert result.stdout == ""


def test_malformed_recipe(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("search = \n")
    result = run("solve", "--recipe", str(bad), "q")
    assert result.returncode == 2 and "is not valid TOML" in result.stderr
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('serch = "beam"\n')
    result = run("solve", "--recipe", str(unknown), "q")
    assert result.returncode == 2 and "unknown key(s) serch" in result.stderr
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("n = -3\n")
    result = run("solve", "--recipe", str(wrong), "q")
    assert result.returncode == 2 and "--n must be at least 1" in result.stderr


def test_no_question_on_a_terminal_like_stdin():
    result = run("solve", stdin="")
    assert result.returncode == 2 and "the question is empty" in result.stderr


def test_flags_override_recipe(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'search = "self-consistency"\nn = 8\ntemperature = 0.5\nverifier = "none"\n[options]\nexploration = 2.0\nkeep = 1\n'
        '[options.prm]\nformat = "qwen"\nseparator = "x"\n'
    )
    params = {"recipe": str(recipe), "n": 3, "option": ("exploration=1.5", "prm.separator=y", "best-of-n.weighted=true"), "prm_model": "/m"}
    config = config_from(params)
    assert config.search == "self-consistency" and config.n == 3 and config.temperature == 0.5
    assert config.verifier is None
    assert config.options == {
        "exploration": 1.5,
        "keep": 1,
        "prm": {"format": "qwen", "separator": "x"},
        "prm.model": "/m",
        "prm.separator": "y",
        "best-of-n.weighted": True,  # component names keep their hyphens
    }


def test_every_shipped_recipe_loads():
    from pathlib import Path

    recipes = sorted(Path(__file__).parent.parent.joinpath("examples", "recipes").glob("*.toml"))
    assert len(recipes) >= 3
    for recipe in recipes:
        config = Config.from_recipe(recipe)
        assert config.search


def test_config_rejects_bad_values_with_usage_errors():
    with pytest.raises(UsageError, match="--aggregation must be one of"):
        Config(aggregation="median")
    with pytest.raises(UsageError, match="--n must be at least 1"):
        Config(n=0)


@pytest.mark.parametrize(
    "search, option",
    [("beam", "lookahead=-1"), ("mcts", "iterations=0"), ("deepconf", "window=x"), ("compute-optimal", "probe=0")],
)
def test_bad_search_options_stop_the_cli_with_one_line(search, option):
    result = run("solve", "--search", search, "-o", option, "q")
    key = option.partition("=")[0]
    assert result.returncode == 2 and f"-o {key}=" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_help_is_fast_path_and_teaches():
    result = run("--help")
    assert result.returncode == 0 and "reason solve" in result.stdout
    solve_help = run("solve", "--help").stdout
    for flag in ("--search", "--n", "--splitter", "--verifier", "--backend", "--model", "--temperature",
                 "--top-p", "--max-tokens", "--seed", "--recipe", "--tree", "--json"):
        assert flag in solve_help
