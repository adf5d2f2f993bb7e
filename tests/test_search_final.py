"""The ``final`` choice every tree search declares (``-o final=top|vote|weighted-vote``):
one set of candidates where the three rules disagree, and the option reaching the policy."""

import pytest
from scripted import ScriptedBackend
from search_helpers import register_tag_verifier, tagged_steps_script, unregister_tag_verifier

from reason import Config, Runtime
from reason.errors import UsageError
from reason.plugins.search.common import choose, final_rule
from reason.types import Candidate

# top score: "A" (0.95); most votes: "B" (3); largest score sum: "C" (0.5 + 0.5 = 1.0).
CANDIDATES = [
    Candidate(node_id=1, text="a", answer="A", score=0.95),
    Candidate(node_id=2, text="b", answer="B", score=0.2),
    Candidate(node_id=3, text="b", answer="B", score=0.2),
    Candidate(node_id=4, text="b", answer="B", score=0.2),
    Candidate(node_id=5, text="c", answer="C", score=0.5),
    Candidate(node_id=6, text="c", answer="C", score=0.5),
]


@pytest.mark.parametrize(("final", "answer"), [("top", "A"), ("vote", "B"), ("weighted-vote", "C")])
def test_each_rule_picks_its_own_answer(final, answer):
    chosen, meta = choose(CANDIDATES, final)
    assert chosen.answer == answer
    assert meta["final"] == final


def test_unset_follows_weighted():
    assert choose(CANDIDATES, final_rule(None, weighted=False))[0].answer == "A"
    assert choose(CANDIDATES, final_rule(None, weighted=True))[0].answer == "C"
    assert final_rule("vote", weighted=True) == "vote"


def test_weights_replace_the_scores():
    weights = [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]  # particle weights, say
    assert choose(CANDIDATES, "top", weights)[0].node_id == 6


def test_no_candidates_is_no_choice():
    assert choose([], "vote")[0] is None


@pytest.fixture
def tag_verifier():
    register_tag_verifier()
    yield
    unregister_tag_verifier()


@pytest.mark.parametrize("search", ["beam", "dvts", "mcts"])
@pytest.mark.parametrize("final", ["top", "vote", "weighted-vote"])
def test_the_option_reaches_every_tree_search(tag_verifier, search, final):
    config = Config(search=search, verifier="test-tags", n=4, options={"final": final, "beam_width": 2})
    runtime = Runtime(config, backend=ScriptedBackend(tagged_steps_script(finish_depth=3)))
    (solution,) = runtime.solve_many(["q"])
    assert solution.meta["final"] == final
    assert solution.answer is not None


def test_an_unknown_final_is_refused_naming_the_choices(tag_verifier):
    config = Config(search="beam", verifier="test-tags", n=4, options={"final": "best"})
    with pytest.raises(UsageError, match="top.*vote.*weighted-vote"):
        Runtime(config, backend=ScriptedBackend(tagged_steps_script(finish_depth=3))).solve_many(["q"])
