"""A step request continues the tokens its path sampled (issue 27): the search sends
them (scripted backend), and the transformers engine reads the path as those tokens,
reuses its cached keys, and lets the next step join the running batch without a
prefill pass of its own (the real model). vLLM's side is in ``test_backend_vllm.py``."""

from __future__ import annotations

import threading

import pytest
from scripted import ScriptedBackend, steps_script

from reason import Config, Continuation, GenerateRequest, Runtime, SamplingParams, Step
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


# -- the transformers engine, on the real embedded model --------------------------------


@pytest.fixture(scope="module")
def backend():
    from reason.plugins.backends.transformers import TransformersBackend

    b = TransformersBackend(Config())
    b.load()
    yield b
    b.close()


def chat(backend, question: str) -> str:
    return backend.format_prompt([{"role": "user", "content": question}])


@pytest.mark.model
def test_the_engine_reads_a_path_as_the_tokens_sampled_not_its_text_encoded_again(backend):
    head = chat(backend, "Write two short lines.")
    newline = backend.encode("\n")[-1]
    line = backend.encode(head + "First line.")[len(backend.encode(head)) :]
    sampled = (*line, newline, newline)  # "\n\n" as two tokens, as the model may sample it
    text = head + "First line.\n\n"
    # the text alone reads as other tokens: "\n\n" at its end is one token
    assert backend.encode(text)[-1] != newline
    params = SamplingParams(temperature=0, max_tokens=4)
    (plain,) = backend.generate([GenerateRequest(text, params)])[0]
    (continued,) = backend.generate([GenerateRequest(text, params, continues=Continuation(head, sampled))])[0]
    assert plain.prompt_tokens == len(backend.encode(text))
    assert continued.prompt_tokens == len(backend.encode(head)) + len(sampled) == plain.prompt_tokens + 1


@pytest.mark.model
def test_a_next_step_joins_the_running_batch_without_a_pass_and_samples_the_same(backend):
    head = chat(backend, "Janet has 3 apples and buys 4 more. How many apples? Think step by step.")
    (first,) = backend.generate([GenerateRequest(head, SamplingParams(temperature=0, max_tokens=12))])[0]
    step = GenerateRequest(
        head + first.text,
        SamplingParams(temperature=0.8, max_tokens=8, seed=5),
        n=2,
        continues=Continuation(head, first.token_ids),
    )
    path = len(backend.encode(head)) + len(first.token_ids)
    # a long request keeps the batch running, so the step arrives while rows decode
    decoding = threading.Event()
    busy = backend.submit(
        GenerateRequest(chat(backend, "Count from one to fifty."), SamplingParams(temperature=0, max_tokens=64)),
        on_text=lambda sample, text: decoding.set(),
    )
    assert decoding.wait(120)
    joined, passes, steps = backend.stats.joined_rows, backend.stats.forward_passes, backend.stats.decode_steps
    joined_samples = backend.submit(step).result(timeout=300)
    assert not busy.done(), "the long request ended first: the step did not arrive while the batch ran"
    assert backend.stats.joined_rows - joined == 2
    # no prefill pass ran for the step: every forward pass was a decode step
    assert backend.stats.forward_passes - passes == backend.stats.decode_steps - steps
    assert [c.cached_tokens for c in joined_samples] == [path - 1, path - 1]
    busy.result(timeout=300)

    # the same step on its own starts the batch: a prefill pass gives its first logits
    joined, passes, steps = backend.stats.joined_rows, backend.stats.forward_passes, backend.stats.decode_steps
    alone = backend.generate([step])[0]
    assert backend.stats.joined_rows == joined
    assert backend.stats.forward_passes - passes == backend.stats.decode_steps - steps + 1
    assert [c.token_ids for c in alone] == [c.token_ids for c in joined_samples]
    assert [c.text for c in alone] == [c.text for c in joined_samples]


@pytest.mark.model
def test_a_next_step_takes_a_finished_rows_place_without_copying_the_batch(monkeypatch):
    from reason.plugins.backends.transformers import TransformersBackend
    from reason.plugins.backends.transformers_sequences import Batch

    backend = TransformersBackend(Config(options={"max_batch": 2}))
    try:
        head = chat(backend, "Tom has 5 pens and loses 2. How many pens? Think step by step.")
        (first,) = backend.generate([GenerateRequest(head, SamplingParams(temperature=0, max_tokens=10))])[0]
        step = GenerateRequest(
            head + first.text,
            SamplingParams(temperature=0.8, max_tokens=6, seed=11),
            continues=Continuation(head, first.token_ids),
        )
        alone = backend.generate([step])[0]

        stacked = []
        stack = Batch.stack
        monkeypatch.setattr(Batch, "stack", lambda batch, newcomers: stacked.append(len(newcomers.rows)) or stack(batch, newcomers))
        # two rows, both taken: the step waits until the short request's row is free (the
        # long request's prompt makes the batch wide enough for the step's path)
        decoding = threading.Event()
        story = " ".join(f"Day {i}: the baker sold {i} loaves." for i in range(1, 16))
        long = GenerateRequest(chat(backend, f"{story} Count the loaves."), SamplingParams(temperature=0, max_tokens=48))
        short = GenerateRequest(chat(backend, "Say hi."), SamplingParams(temperature=0, max_tokens=3))
        futures = [backend.submit(long, on_text=lambda sample, text: decoding.set()), backend.submit(short)]
        assert decoding.wait(120)
        joined, passes, steps = backend.stats.joined_rows, backend.stats.forward_passes, backend.stats.decode_steps
        placed = backend.submit(step).result(timeout=300)
        assert not futures[0].done(), "the long request ended first"
        assert len(backend.encode(long.prompt)) > len(backend.encode(head)) + len(first.token_ids)
        assert backend.stats.joined_rows - joined == 1 and stacked == []
        assert backend.stats.forward_passes - passes == backend.stats.decode_steps - steps
        assert [c.token_ids for c in placed] == [c.token_ids for c in alone]
        for future in futures:
            future.result(timeout=300)
    finally:
        backend.close()
