"""PRM beam search logic on the scripted backend: keep the top N/M, expand each M times,
one backend call per round for every path of every task."""

import re

import pytest
from scripted import ScriptedBackend
from search_helpers import register_tag_verifier, tagged_steps_script, unregister_tag_verifier

from reason import Config, Runtime
from reason.errors import UsageError


@pytest.fixture(autouse=True)
def tag_verifier():
    register_tag_verifier()
    yield
    unregister_tag_verifier()


def run(tasks=("q",), script=None, **config):
    backend = ScriptedBackend(script or tagged_steps_script(finish_depth=4))
    settings = dict(search="beam", verifier="test-tags", n=6, beam_width=2)
    settings.update(config)
    runtime = Runtime(Config().replace(**settings), backend=backend)
    return runtime.solve_many(list(tasks)), backend


def by_round(solution, index):
    return [node for node in solution.tree if node.meta.get("round") == index and not node.meta.get("lookahead")]


def test_keeps_top_n_over_m_and_expands_each_m_times():
    (solution,), backend = run()
    # round 0: the root sampled N=6 times; rounds 1-3: N/M=3 kept paths, M=2 samples each
    assert [[r.n for r in call] for call in backend.calls] == [[6], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    for index in range(3):
        nodes = by_round(solution, index)
        assert len(nodes) == 6
        ranked = sorted(nodes, key=lambda n: n.scores["test-tags"], reverse=True)
        kept, dropped = ranked[:3], ranked[3:]
        assert all(len(n.children) == 2 and not n.pruned for n in kept)
        assert all(not n.children and n.pruned for n in dropped)
    # the last round's paths gave answers: they are the completed set, best first
    finals = by_round(solution, 3)
    assert len(solution.candidates) == 6 and all(n.terminal for n in finals)
    assert [c.score for c in solution.candidates] == sorted((n.scores["test-tags"] for n in finals), reverse=True)
    assert solution.score == max(n.scores["test-tags"] for n in finals)
    assert solution.tree.max_depth == 4
    assert solution.meta["rounds"] == 4 and solution.meta["keep"] == 3


def test_a_round_over_all_paths_of_several_tasks_is_one_backend_call():
    solutions, backend = run(tasks=("q1", "q2", "q3"))
    assert [len(call) for call in backend.calls] == [3, 9, 9, 9]
    assert all(s.usage.model_calls == 4 for s in solutions)
    assert all(s.usage.verifier_calls == 4 for s in solutions)


def test_finished_paths_leave_and_n_paths_stay_active():
    # paths whose step scores below 0.4 give their answer at once
    base = tagged_steps_script(finish_depth=6)

    def script(request, index):
        text = base(request, index)
        if "\n\n" in request.params.stop and float(re.search(r"<([\d.]+)>", text).group(1)) < 0.4:
            return text.replace("\n\n", " \\boxed{1}")
        return text

    (solution,), backend = run(script=script, max_steps=5)
    previous_open = None
    for index, call in enumerate(backend.calls):
        assert sum(r.n for r in call) == 6  # N paths every round
        if previous_open is not None:
            assert len(call) == min(3, previous_open)
        nodes = by_round(solution, index)
        previous_open = sum(1 for n in nodes if "\\boxed" not in n.step.text)
    finished = [n for n in solution.tree if n.step and "\\boxed" in n.step.text]
    assert all(not n.children for n in finished)
    assert len(solution.candidates) == 6


def test_dedup_expands_one_copy_of_identical_steps():
    (solution,), backend = run(script=tagged_steps_script(finish_depth=3, same_first=True), options={"dedup": True})
    assert [r.n for r in backend.calls[1]] == [6]  # one unique path, expanded N times
    duplicates = [n for n in by_round(solution, 0) if n.pruned]
    assert len(duplicates) == 5
    (solution,), backend = run(script=tagged_steps_script(finish_depth=3, same_first=True))
    assert [r.n for r in backend.calls[1]] == [2, 2, 2]  # without dedup: three copies kept


def test_lookahead_ranks_steps_by_their_greedy_continuation():
    (solution,), backend = run(options={"lookahead": 1}, max_steps=3)
    assert any(r.params.temperature == 0.0 for call in backend.calls for r in call)
    first = by_round(solution, 0)
    looks = {}
    for node in first:
        (look,) = [c for c in node.children if c.meta.get("lookahead")]
        assert look.pruned
        looks[node.id] = look.scores["test-tags"]
        assert node.meta["lookahead_score"] == looks[node.id]
    kept = {n.id for n in first if any(not c.meta.get("lookahead") for c in n.children)}
    best = sorted(looks, key=looks.get, reverse=True)[:3]
    assert kept == set(best)


def test_last_round_completes_every_path():
    (solution,), backend = run(max_steps=2)
    assert all("\n\n" in r.params.stop for r in backend.calls[0])
    assert all("\n\n" not in r.params.stop for r in backend.calls[1])
    assert len(solution.candidates) == 6
    assert all(c.answer is not None for c in solution.candidates)


def test_weighted_choice_sums_scores_per_answer():
    (solution,), _ = run(weighted=True)
    assert solution.meta["mode"] == "weighted"
    assert solution.answer in {c.answer for c in solution.candidates}


def test_bad_lookahead_is_a_usage_error():
    with pytest.raises(UsageError, match="lookahead"):
        run(options={"lookahead": -1})
