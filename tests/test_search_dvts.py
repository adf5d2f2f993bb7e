"""DVTS logic on the scripted backend: N/M independent subtrees, each greedily keeping
its best of M samples per round, N completions grouped by subtree."""

import pytest
from scripted import ScriptedBackend
from search_helpers import register_tag_verifier, tagged_steps_script, unregister_tag_verifier

from reason import Config, Runtime


@pytest.fixture(autouse=True)
def tag_verifier():
    register_tag_verifier()
    yield
    unregister_tag_verifier()


def run(tasks=("q",), finish_depth=4, **config):
    backend = ScriptedBackend(tagged_steps_script(finish_depth=finish_depth))
    settings = dict(search="dvts", verifier="test-tags", n=6, beam_width=2)
    settings.update(config)
    runtime = Runtime(Config().replace(**settings), backend=backend)
    return runtime.solve_many(list(tasks)), backend


def subtree_of(node):
    """The index of the subtree ``node`` belongs to, from its first step."""
    return node.path()[0].meta["subtree"]


def test_subtrees_stay_independent_and_keep_their_best_step():
    (solution,), backend = run()
    tree = solution.tree
    # 3 subtrees, each sampling M=2 steps per round: 3 requests (n=2) per backend call
    assert [[r.n for r in call] for call in backend.calls] == [[2, 2, 2]] * 4
    assert len(tree.root.children) == 6
    for node in tree:
        if node.step is None:
            continue
        # a node's subtree is its first step's subtree: no node is shared across subtrees
        assert node.meta["subtree"] == subtree_of(node)
        if len(node.path()) > 1:
            assert node.parent.meta["subtree"] == node.meta["subtree"]
    for index in range(3):
        members = [n for n in tree if n.step is not None and n.meta["subtree"] == index]
        for depth in range(1, 4):
            siblings = [n for n in members if n.depth == depth]
            assert len(siblings) == 2
            best = max(siblings, key=lambda n: n.scores["test-tags"])
            # the best one is the one the subtree went on from; the other was pruned
            assert len(best.children) == 2 and not best.pruned
            (other,) = [n for n in siblings if n is not best]
            assert not other.children and other.pruned


def test_returns_n_completions_grouped_by_subtree():
    (solution,), _ = run()
    groups = solution.meta["subtrees"]
    assert len(groups) == 3 and all(len(g) == 2 for g in groups)
    assert sorted(c.node_id for c in solution.candidates) == sorted(i for g in groups for i in g)
    for index, group in enumerate(groups):
        assert {solution.tree[i].meta["subtree"] for i in group} == {index}
        assert {solution.tree[i].depth for i in group} == {4}
    assert all(c.answer is not None for c in solution.candidates)
    assert solution.score == max(c.score for c in solution.candidates)


def test_subtrees_of_several_tasks_share_backend_calls():
    solutions, backend = run(tasks=("a", "b"))
    assert [len(call) for call in backend.calls] == [6, 6, 6, 6]
    assert all(s.usage.model_calls == 4 for s in solutions)


def test_n_smaller_than_m_gives_one_subtree():
    (solution,), backend = run(n=2, beam_width=4)
    assert [r.n for r in backend.calls[0]] == [4]
    assert len(solution.meta["subtrees"]) == 1
