"""Reflection triggers on the scripted backend: each fires when it should, becomes a
visible node and an event, caps itself, and the model continues after it."""

import pytest
from scripted import ScriptedBackend
from search_helpers import WordBackend

from reason import Config, Runtime, Score, Verifier
from reason.errors import UsageError
from reason.events import ReflectionInjected
from reason.plugins.reflection import MARCO_PHRASE
from reason.registry import get_registry


def solve(backend, question="q", **config):
    runtime = Runtime(Config().replace(**config), backend=backend)
    events = []
    runtime.subscribe(lambda e: events.append(e) if isinstance(e, ReflectionInjected) else None)
    (solution,) = runtime.solve_many([question])
    reflections = [n for n in solution.tree if n.kind == "reflection"]
    assert len(events) == len(reflections)  # every reflection is an event and a node
    assert {e.node_id for e in events} == {n.id for n in reflections}
    return solution, reflections


def test_marco_rethinks_once_at_the_end_of_a_solution():
    backend = ScriptedBackend()  # writes "Step one.\n\nThe answer is \boxed{4}." and ends
    solution, reflections = solve(backend, search="best-of-n", n=2, reflect=("marco",))
    assert len(reflections) == 2
    for node in reflections:
        assert node.meta["trigger"] == "marco" and node.step.injected
        assert node.step.text == "\n\n" + MARCO_PHRASE + "\n\n"
        assert node.parent.step.finish_reason == "eos" and not node.parent.terminal
        (after,) = node.children  # the model went on after the reflection
        assert after.terminal
    assert solution.text.count("\\boxed{4}") == 2 and MARCO_PHRASE in solution.text
    assert len(backend.calls) == 2  # the continuations of both paths share one call


def test_marco_phrase_and_count_are_options():
    solution, reflections = solve(
        ScriptedBackend(), search="greedy", reflect=("marco",), options={"marco_max": 2, "marco_phrase": "Hmm."}
    )
    assert len(reflections) == 2 and all("Hmm." in n.step.text for n in reflections)
    assert solution.text.count("Hmm.") == 2


def test_marco_on_an_answer_step_keeps_a_step_search_going():
    def script(request, index):
        return "More.\n\n" if "rethink" in request.prompt else "The answer is \\boxed{4}.\n\n"

    solution, reflections = solve(ScriptedBackend(script), search="beam", n=1, beam_width=1, max_steps=3, reflect=("marco",))
    (node,) = reflections
    assert node.parent.step.text.startswith("The answer is") and node.children


def steps_backend(*steps):
    """A WordBackend writing ``steps`` one per request (by how many the prompt holds)."""

    def script(request, index):
        done = sum(1 for s in steps if s in request.prompt)
        return steps[done] if done < len(steps) else "The answer is \\boxed{1}."

    return WordBackend(script)


def test_low_confidence_reflects_after_an_unsure_step_only():
    backend = steps_backend("Step sure one.\n\n", "Step unsure unsure unsure unsure.\n\n", "Step sure two.\n\n")
    solution, reflections = solve(
        backend, search="beam", n=1, beam_width=1, reflect=("low-confidence:0.5",), verifier="confidence"
    )
    (node,) = reflections
    assert node.meta["trigger"] == "low-confidence:0.5"
    assert "unsure" in node.parent.step.text
    assert node.children  # the path continued after the reflection
    assert solution.answer == "1"


def test_low_confidence_threshold_decides():
    backend = steps_backend("Step unsure unsure unsure unsure.\n\n")
    _, reflections = solve(backend, search="beam", n=1, beam_width=1, reflect=("low-confidence:0.1",))
    assert reflections == []
    with pytest.raises(UsageError, match="low-confidence"):
        Runtime(Config(reflect=("low-confidence:high",)), backend=ScriptedBackend()).solve("q")
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        Runtime(Config(reflect=("low-confidence:2",)), backend=ScriptedBackend()).solve("q")


class FailingVerifier(Verifier):
    """Rejects a path with feedback until its text says "fixed"."""

    def score(self, requests):
        return [
            Score(step_scores=[1.0] * len(r.steps), passed=True)
            if "fixed" in r.text
            else Score(step_scores=[0.0] * len(r.steps), passed=False, feedback="NameError: name 'x' is not defined")
            for r in requests
        ]


@pytest.fixture
def failing_verifier():
    get_registry().add("verifier", "test-fail", FailingVerifier, plugin="tests")
    yield
    get_registry().remove("verifier", "test-fail")


def fix_script(request, index):
    if "NameError" in request.prompt:
        return "Now fixed: \\boxed{4}."
    return "x + 1 gives \\boxed{3}."


@pytest.mark.parametrize(
    "search, max_steps", [("best-of-n", 40), ("beam", 40), ("beam", 1), ("dvts", 40), ("dvts", 1), ("mcts", 40)]
)
def test_on_verifier_fail_injects_the_feedback_and_the_model_fixes_it(failing_verifier, search, max_steps):
    solution, reflections = solve(
        ScriptedBackend(fix_script), search=search, n=2, beam_width=1, verifier="test-fail",
        reflect=("on-verifier-fail",), max_steps=max_steps,
    )
    assert reflections
    for node in reflections:
        assert node.meta["trigger"] == "on-verifier-fail"
        assert "NameError: name 'x' is not defined" in node.step.text
        assert node.parent.meta["score"].passed is False
    assert solution.answer == "4" and solution.score == 1.0
    assert "x + 1" in solution.text and "fixed" in solution.text


def test_on_verifier_fail_threshold_without_an_exact_verdict():
    # the confidence verifier has no pass/fail; a threshold makes low scores fail
    backend = steps_backend()
    _, reflections = solve(
        backend, search="best-of-n", n=1, reflect=("on-verifier-fail",), options={"fail_threshold": 0.99}
    )
    (node,) = reflections
    assert node.step.text.strip().startswith("Wait, a check says")
    _, reflections = solve(steps_backend(), search="best-of-n", n=1, reflect=("on-verifier-fail",))
    assert reflections == []


def thinking_script(request, index):
    """A <think> model: thinks four tokens, then tries to close; answers once closed."""
    if "</think>" in request.prompt:
        return "\n\nThe answer is \\boxed{4}."
    return "Thinking about it. </think>"


def test_budget_forcing_appends_wait_until_the_minimum():
    backend = ScriptedBackend(thinking_script)
    solution, reflections = solve(
        backend, search="greedy", reflect=("budget-forcing",), options={"min_thinking_tokens": 10}
    )
    # 4 thinking tokens < 10: Wait; 8 < 10: Wait; 12 >= 10: thinking may end
    assert [n.step.text for n in reflections] == ["Wait", "Wait"]
    for node in reflections:
        assert node.parent.meta["suppressed"] == "</think>"
        assert "</think>" not in node.parent.step.text
    assert solution.text.count("</think>") == 1 and solution.text.count("Wait") == 2
    assert solution.text.index("Wait") < solution.text.index("</think>") < solution.text.index("\\boxed{4}")
    assert solution.text == "Thinking about it. Wait" * 2 + "Thinking about it. </think>\n\nThe answer is \\boxed{4}."
    assert solution.answer == "4"
    assert all("</think>" in r.params.stop for call in backend.calls for r in call)


def test_budget_forcing_forces_the_answer_at_the_maximum():
    def rambling(request, index):
        if "</think>" in request.prompt:
            return " \\boxed{4}."
        return "and more " * 50

    backend = ScriptedBackend(rambling)
    solution, reflections = solve(backend, search="greedy", reflect=("budget-forcing:0:6",))
    (node,) = reflections
    assert node.step.text == "\n</think>\n\nThe answer is"
    assert node.parent.num_tokens == 6  # generation was capped at the thinking budget
    assert solution.answer == "4"


def test_budget_forcing_without_think_tags_extends_a_short_answer():
    # SmolLM2-style model: no <think>; ending the text early counts as ending the thinking
    backend = ScriptedBackend()
    solution, reflections = solve(backend, search="greedy", reflect=("budget-forcing:20",))
    # each pass writes 6 tokens: Wait after 6, 12 and 18, then 24 >= 20 ends it
    assert [n.step.text for n in reflections] == ["\n\nWait"] * 3
    assert solution.text.count("\\boxed{4}") == 4
    assert solution.tree[reflections[-1].id].children
    with pytest.raises(UsageError, match="budget-forcing"):
        Runtime(Config(reflect=("budget-forcing:lots",)), backend=ScriptedBackend()).solve("q")


def test_on_verifier_fail_feeds_back_the_failing_public_test():
    """The sandbox verifier's feedback names the failing public test; the trigger injects
    it, headed by the first failure even when long. An unverified path (no public tests:
    passed is None, score 0.5) is no failure."""
    from reason import Step, Task
    from reason.plugins.reflection import VerifierFailReflection
    from reason.plugins.verifiers.sandbox import UNVERIFIED_SCORE, tests_feedback

    report = {
        "passed": 1, "total": 3,
        "failures": [("assert f(2) == 4", "AssertionError: f(2) returned 3, expected 4"),
                     ("assert f(5) == 10", "AssertionError: f(5) returned 6, expected 10" + " ..." * 400)],
    }
    feedback = tests_feedback(report)
    assert feedback.startswith("2 of 3 public tests failed.\nFailed: assert f(2) == 4\n")
    trigger = VerifierFailReflection(Config(), None)
    task = Task(question="Write f.", kind="code")
    steps = [Step(text="```python\ndef f(x):\n    return x + 1\n```")]
    text = trigger.on_step(task, steps, Score(step_scores=[1 / 3], passed=False, feedback=feedback), 0)
    assert "Failed: assert f(2) == 4\nAssertionError: f(2) returned 3, expected 4" in text
    assert text.startswith("\n\nWait, this is not right. 2 of 3 public tests failed.")
    assert len(text) < 1700  # cut at fail_feedback_chars, keeping the head
    unverified = Score(step_scores=[UNVERIFIED_SCORE], passed=None)
    assert trigger.on_step(task, steps, unverified, 0) is None
