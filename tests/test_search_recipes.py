"""The tree-search recipes load, build their policy, and run (scripted backend)."""

from pathlib import Path

import pytest
from scripted import ScriptedBackend

from reason import Config, Runtime

RECIPES = Path(__file__).resolve().parent.parent / "examples" / "recipes"


@pytest.mark.parametrize("name", ["beam", "dvts", "mcts", "compute-optimal", "deepconf", "particle-filtering"])
def test_recipe_runs(name):
    config = Config.from_recipe(RECIPES / f"{name}.toml")
    assert config.search == name
    runtime = Runtime(config, backend=ScriptedBackend())
    solution = runtime.solve("What is 2 + 2?")
    assert solution.answer == "4"
    assert solution.usage.model_calls >= 1
