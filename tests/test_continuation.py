"""A step request continues the tokens its path sampled (issue 27): the search sends
them (scripted backend). How the engines read them: ``test_backend_transformers.py``
(the path as those tokens, its cached keys reused, the next step joining the running
batch without a prefill pass of its own) and ``test_backend_vllm.py``."""

from __future__ import annotations

from scripted import ScriptedBackend, steps_script

from reason import Config, Runtime, Step
from reason.tree import Tree


def test_a_step_request_carries_the_tokens_sampled_along_its_path():
    backend = ScriptedBackend(steps_script(["One.\n\n", "Two.\n\n", "Three.\n\n", "\\boxed{3}"]))
    runtime = Runtime(Config(search="beam", n=4, verifier="confidence", options={"beam.width": 2}), backend=backend)
    (solution,) = runtime.solve_many(["q"])
    by_text = {node.text(): node for node in solution.tree if node.step is not None}
    requests = [request for call in backend.calls for request in call]
    root, *steps = requests
    assert root.continues is None  # nothing sampled yet: the prompt is all there is
    assert len(steps) >= 4
    for request in steps:
        head, sampled = request.continues.head, request.continues.sampled
        node = by_text[request.prompt[len(head) :]]
        assert request.prompt == head + node.text()
        assert sampled == node.sampled_ids() == tuple(i for step in node.steps() for i in step.token_ids)


def test_a_path_with_text_the_model_did_not_sample_has_no_token_ids():
    tree = Tree("<user>2+2?<assistant>")
    step = tree.add(tree.root, Step(text="Two plus two.\n\n", token_ids=(11, 12, 13)))
    assert step.sampled_ids() == (11, 12, 13)
    reflection = tree.add(step, Step(text="Wait! Let me check.\n\n", injected=True), kind="reflection")
    after = tree.add(reflection, Step(text="Four.", token_ids=(21,)))
    assert reflection.sampled_ids() is None and after.sampled_ids() is None
