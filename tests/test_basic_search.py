"""greedy, self-consistency and best-of-n logic, on the scripted backend."""

import math

from scripted import ScriptedBackend

from reason import Config, Runtime


def answers_script(answers):
    return lambda request, i: f"Thinking.\n\nThe answer is \\boxed{{{answers[i % len(answers)]}}}."


def test_self_consistency_votes_equivalent_answers_together():
    backend = ScriptedBackend(answers_script(["0.5", "7", "\\frac{1}{2}", "7", "1/2"]))
    solution = Runtime(Config(search="self-consistency", n=5, verifier=None), backend=backend).solve("q")
    assert solution.answer in ("0.5", "\\frac{1}{2}", "1/2")
    assert solution.score == 3 / 5  # the vote share
    assert [c.score for c in solution.candidates] == [None] * 5  # no verifier scored them


def test_best_of_n_naive_takes_the_highest_score():
    # confidence is higher where the logprobs are higher: make sample 2 the most confident
    backend = ScriptedBackend(answers_script(["1", "2", "3", "4"]), logprob=lambda text, i: -0.05 if "3" in text else -2.0)
    solution = Runtime(Config(search="best-of-n", n=4, verifier="confidence"), backend=backend).solve("q")
    assert solution.answer == "3"
    assert solution.score == max(c.score for c in solution.candidates)


def test_best_of_n_weighted_sums_scores_per_answer():
    # "5" twice at medium confidence beats "9" once at high confidence
    def logprob(text, i):
        return -0.05 if "9" in text else -0.4

    backend = ScriptedBackend(answers_script(["5", "9", "5"]), logprob=logprob)
    naive = Runtime(Config(search="best-of-n", n=3), backend=backend).solve("q")
    weighted = Runtime(Config(search="best-of-n", n=3, options={"best-of-n.weighted": True}), backend=backend).solve("q")
    assert naive.answer == "9"
    assert weighted.answer == "5"
    assert weighted.meta["mode"] == "weighted"


def test_best_of_n_step_scores_follow_the_splitter():
    backend = ScriptedBackend(lambda r, i: "A.\n\nB.\n\nC. The answer is \\boxed{2}.")
    solution = Runtime(Config(search="best-of-n", n=1, aggregation="min"), backend=backend).solve("q")
    (candidate,) = solution.candidates
    assert len(candidate.step_scores) == 3
    assert math.isclose(candidate.score, min(candidate.step_scores))


def test_greedy_is_temperature_zero_and_one_sample():
    backend = ScriptedBackend()
    solution = Runtime(Config(search="greedy", temperature=0.9), backend=backend).solve("q")
    (call,) = backend.calls
    assert call[0].params.temperature == 0.0 and call[0].n == 1
    assert solution.answer == "4" and len(solution.candidates) == 1


def test_usage_is_counted_per_search():
    backend = ScriptedBackend()
    solution = Runtime(Config(search="best-of-n", n=3), backend=backend).solve("q")
    tokens = sum(node.num_tokens for node in solution.tree if node.step)
    assert solution.usage.completion_tokens == tokens > 0
    assert solution.usage.sequences == 3 and solution.usage.model_calls == 1 and solution.usage.verifier_calls == 1
    assert solution.usage.seconds > 0


def test_solution_json_has_the_documented_fields():
    solution = Runtime(Config(search="best-of-n", n=2), backend=ScriptedBackend()).solve("q")
    data = solution.to_dict(tree=True)
    for key in ("answer", "text", "score", "usage", "seconds", "candidates", "tree"):
        assert key in data
    assert set(data["usage"]) >= {"prompt_tokens", "completion_tokens", "model_calls"}
    assert all({"answer", "score"} <= set(c) for c in data["candidates"])
    assert data["tree"]["nodes"][0]["kind"] == "root"


def test_the_tree_records_the_chosen_leaf():
    backend = ScriptedBackend(answers_script(["3", "4", "4"]))
    with Runtime(Config(search="self-consistency", n=3, verifier=None), backend=backend) as rt:
        solution = rt.solve("q")
    chosen = solution.tree[solution.tree.chosen]
    assert chosen.text() == solution.text and solution.answer == "4"
    assert solution.tree.to_dict()["chosen"] == chosen.id


def test_a_tasks_history_reaches_the_model_as_turns_before_its_question():
    import pytest

    from reason import Task

    backend = ScriptedBackend()
    history = [{"role": "user", "content": "I have 3 apples."}, {"role": "assistant", "content": "OK."}]
    Runtime(Config(search="greedy", system_prompt="Be brief."), backend=backend).solve(Task("And 2 more?", history=history))
    (request,) = backend.calls[0]
    assert request.prompt == "<system>Be brief.\n<user>I have 3 apples.\n<assistant>OK.\n<user>And 2 more?\n<assistant>"
    with pytest.raises(ValueError, match=r"history\[0\] must be"):
        Task("q", history=[{"role": "system", "content": "x"}])
    with pytest.raises(ValueError, match=r"history\[1\]'s content must be text"):
        Task("q", history=[{"role": "user", "content": "a"}, {"role": "assistant", "content": None}])
