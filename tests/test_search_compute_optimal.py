"""Compute-optimal: a cheap probe estimates difficulty, the recipe's table picks the
strategy and N per problem; fitting a table from eval records."""

import pytest
from scripted import ScriptedBackend
from search_helpers import register_tag_verifier, tagged_steps_script, unregister_tag_verifier

from reason import Config, Runtime
from reason.errors import UsageError
from reason.plugins.search.compute_optimal import fit_table, parse_table, pick

TABLE = [
    {"max_difficulty": 1.0, "search": "beam", "n": 4, "beam_width": 2},
    {"max_difficulty": 0.5, "search": "best-of-n", "n": 2},
]


@pytest.fixture(autouse=True)
def tag_verifier():
    register_tag_verifier()
    yield
    unregister_tag_verifier()


def make_script():
    steps = tagged_steps_script(finish_depth=3)

    def script(request, index):
        if request.params.max_tokens == 77:  # the probe (probe_tokens=77)
            return "Probe <0.9>" if "easy" in request.prompt else "Probe <0.2>"
        return steps(request, index)

    return script


def test_difficulty_picks_strategy_and_n_per_problem():
    backend = ScriptedBackend(make_script())
    config = Config(search="compute-optimal", verifier="test-tags", options={"table": TABLE, "probe": 2, "probe_tokens": 77})
    easy, hard = Runtime(config, backend=backend).solve_many(["an easy one", "a hard one"])
    assert easy.meta["difficulty"] == pytest.approx(0.1)
    assert (easy.meta["strategy"], easy.meta["strategy_n"]) == ("best-of-n", 2)
    assert hard.meta["difficulty"] == pytest.approx(0.8)
    assert (hard.meta["strategy"], hard.meta["strategy_n"]) == ("beam", 4)
    assert hard.meta["choice"] == {"search": "beam", "n": 4, "beam_width": 2}
    # both probes went out in one call; then each chosen strategy ran on its own tree
    assert [r.n for r in backend.calls[0]] == [2, 2]
    assert len(easy.candidates) == 2 and easy.tree.max_depth == 1
    assert hard.tree.max_depth == 3 and hard.meta["keep"] == 2
    assert all(hard.tree[p["node_id"]].meta.get("probe") for p in hard.meta["probe"])
    # the probe's cost is part of the solve's usage
    assert hard.usage.model_calls == 1 + hard.meta["rounds"]


def test_table_rows_are_validated():
    assert [r["search"] for r in parse_table(TABLE)] == ["best-of-n", "beam"]  # sorted by difficulty
    assert [r["search"] for r in parse_table(None)] == ["best-of-n", "dvts", "beam"]
    with pytest.raises(UsageError, match="max_difficulty"):
        parse_table([{"search": "beam"}])
    with pytest.raises(UsageError, match="unknown key"):
        parse_table([{"max_difficulty": 1.0, "search": "beam", "beams": 3}])
    with pytest.raises(UsageError, match="itself"):
        parse_table([{"max_difficulty": 1.0, "search": "compute-optimal"}])
    with pytest.raises(UsageError, match="non-empty list"):
        parse_table("beam")
    with pytest.raises(UsageError, match="unknown search"):
        Runtime(Config(search="compute-optimal", options={"table": [{"max_difficulty": 1, "search": "nope"}]}),
                backend=ScriptedBackend()).solve("q")


def test_pick_uses_the_first_covering_row_and_the_hardest_beyond():
    table = parse_table(TABLE)
    assert pick(table, 0.0)["search"] == "best-of-n"
    assert pick(table, 0.5)["search"] == "best-of-n"
    assert pick(table, 0.51)["search"] == "beam"
    assert pick(table, 3.0)["search"] == "beam"


def test_fit_table_keeps_the_most_accurate_setting_per_difficulty_bin():
    records = []
    for task in range(6):
        difficulty = task / 10  # tasks 0-2 easy, 3-5 hard
        easy = task < 3
        records.append({"difficulty": difficulty, "search": "best-of-n", "n": 4, "correct": easy, "tokens": 400})
        records.append({"difficulty": difficulty, "search": "beam", "n": 8, "correct": True, "tokens": 2000})
        records.append({"difficulty": difficulty, "search": "dvts", "n": 4, "correct": easy, "tokens": 900})
    table = fit_table(records, bins=2)
    # easy bin: all three are right, best-of-n is cheapest; hard bin: only beam is right
    assert table == [
        {"max_difficulty": 0.2, "search": "best-of-n", "n": 4},
        {"max_difficulty": 1.0, "search": "beam", "n": 8},
    ]
    # within a token budget beam is out: the cheapest of the rest wins the hard bin
    assert fit_table(records, bins=2, token_budget=1000)[-1]["search"] == "best-of-n"
    assert parse_table(table)  # a fitted table is a valid -o table value
