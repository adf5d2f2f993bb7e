"""Marco-o1 MCTS logic: UCT selection by the formula, backpropagated visits and values,
expansion width, final answer by visits or value."""

import math

import pytest
from scripted import ScriptedBackend
from search_helpers import WordBackend, register_tag_verifier, tagged_steps_script, unregister_tag_verifier

import reason.plugins.search.mcts as mcts
from reason import Config, Runtime, Step, Tree, aggregate
from reason.errors import UsageError


@pytest.fixture(autouse=True)
def tag_verifier():
    register_tag_verifier()
    yield
    unregister_tag_verifier()


def run(backend=None, **config):
    settings = dict(search="mcts", verifier="test-tags", n=4, aggregation="mean")
    settings.update(config)
    runtime = Runtime(Config(**settings), backend=backend or ScriptedBackend(tagged_steps_script(finish_depth=4)))
    (solution,) = runtime.solve_many(["q"])
    return solution


def tree_with_children(stats):
    """A root with one child per (visits, value_sum) pair."""
    tree = Tree(prompt="p")
    children = []
    for visits, value_sum in stats:
        child = tree.add(tree.root, Step(text="s"))
        child.visits, child.value_sum = visits, value_sum
        children.append(child)
    tree.root.visits = sum(v for v, _ in stats)
    return tree.root, children


def test_uct_formula():
    root, (a, b) = tree_with_children([(3, 2.4), (1, 0.5)])
    assert mcts.uct(root, a, 1.414) == pytest.approx(0.8 + 1.414 * math.sqrt(math.log(4) / 3))
    assert mcts.uct(root, b, 1.414) == pytest.approx(0.5 + 1.414 * math.sqrt(math.log(4) / 1))
    # much exploration favours the rarely visited child, little favours the better mean
    assert mcts.select_child(root, [a, b], 1.414) is b
    assert mcts.select_child(root, [a, b], 0.1) is a
    assert mcts.select_child(root, [a, b], 0.0) is a


def test_unvisited_children_are_selected_first():
    root, (a, b, c) = tree_with_children([(5, 5.0), (0, 0.0), (0, 0.0)])
    assert mcts.uct(root, b, 1.0) == math.inf
    assert mcts.select_child(root, [a, b, c], 1.0) is b


def test_backpropagate_adds_a_visit_and_the_value_up_to_the_root():
    tree = Tree(prompt="p")
    a = tree.add(tree.root, Step(text="a"))
    b = tree.add(a, Step(text="b"))
    sibling = tree.add(tree.root, Step(text="c"))
    mcts.backpropagate(b, 0.75)
    mcts.backpropagate(a, 0.25)
    assert (b.visits, b.value_sum) == (1, 0.75)
    assert (a.visits, a.value_sum) == (2, 1.0)
    assert (tree.root.visits, tree.root.value_sum) == (2, 1.0)
    assert (sibling.visits, sibling.value_sum) == (0, 0.0)
    assert a.value == 0.5


def subtree(node):
    yield node
    for child in node.children:
        yield from subtree(child)


def test_visits_and_values_add_up_over_a_search(monkeypatch):
    picks = []
    original = mcts.select_child

    def recording(parent, children, exploration):
        chosen = original(parent, children, exploration)
        values = [
            math.inf if c.visits == 0 else c.value + exploration * math.sqrt(math.log(parent.visits) / c.visits)
            for c in children
        ]
        picks.append((values, children.index(chosen)))
        return chosen

    monkeypatch.setattr(mcts, "select_child", recording)
    solution = run(options={"iterations": 8, "expansion_width": 2, "exploration": 1.0})
    tree = solution.tree
    assert tree.root.visits == 8
    rewards = [r for node in tree for r in node.meta.get("rewards", [])]
    assert len(rewards) == 8 == len(solution.candidates)
    assert tree.root.value_sum == pytest.approx(sum(rewards), abs=1e-5)
    for node in tree:
        below = [r for n in subtree(node) for r in n.meta.get("rewards", [])]
        assert node.visits == len(below)
        assert node.value_sum == pytest.approx(sum(below), abs=1e-5)
    # every descent followed the highest UCT value (the first of equals)
    assert picks and all(index == values.index(max(values)) for values, index in picks)
    # expanded nodes got exactly expansion_width children; the search went deeper than one step
    expanded = [n for n in tree if any("iteration" in c.meta for c in n.children)]
    assert all(sum("iteration" in c.meta for c in n.children) == 2 for n in expanded)
    assert max(n.depth for n in tree if "iteration" in n.meta) >= 2
    # a reward is the aggregated verifier score of the rollout's whole path
    for candidate in solution.candidates:
        leaf = tree[candidate.node_id]
        assert candidate.score == pytest.approx(aggregate(leaf.meta["score"].step_scores, "mean"))
        assert leaf.terminal


def test_final_answer_follows_most_visits_or_best_value():
    for final in ("visits", "value"):
        solution = run(options={"iterations": 7, "final": final})
        tree = solution.tree
        path = [tree[i] for i in solution.meta["answer_path"]]
        assert path
        node = tree.root
        for step in path:
            siblings = [c for c in node.children if "iteration" in c.meta and c.visits > 0]
            key = (lambda c: (c.visits, c.value)) if final == "visits" else (lambda c: (c.value, c.visits))
            assert step is max(siblings, key=key)
            node = step
        # the answer is the best rollout from the end of that path
        rollouts = [c for c in solution.candidates if path[-1] in tree[c.node_id].path()]
        assert solution.score == max(c.score for c in rollouts)


def test_default_reward_is_marco_confidence():
    def script(request, index):
        if "Step 0" in request.prompt:  # a rollout: an unsure first step leads to 2
            return "The answer is \\boxed{2}." if "unsure" in request.prompt else "The answer is \\boxed{3}."
        return "Step 0 unsure unsure unsure\n\n" if index == 0 else "Step 0 fine\n\n"

    runtime = Runtime(Config(search="mcts", n=2, aggregation="mean"), backend=WordBackend(script))
    (solution,) = runtime.solve_many(["q"])
    scores = {c.answer: c.score for c in solution.candidates}
    # mean over steps of the mean token confidence: ~0.97 when sure, lower with unsure tokens
    assert scores["3"] > 0.9 and scores["2"] < 0.75
    assert solution.answer == "3"


def test_bad_options_are_usage_errors():
    with pytest.raises(UsageError, match="final"):
        run(options={"final": "best"})
    with pytest.raises(UsageError, match="iterations"):
        run(options={"iterations": 0})


def test_mini_step_actions():
    # Marco-o1's mini-steps: every action is at most 3 tokens, rollouts are whole texts
    solution = run(splitter="ministep:3", options={"iterations": 5})
    searched = [n for n in solution.tree if "iteration" in n.meta]
    assert searched and all(len(n.step.token_ids) <= 3 for n in searched)
    assert solution.tree.root.visits == 5 and solution.answer is not None
