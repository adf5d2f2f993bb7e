"""The transformers backend on the real embedded model (SmolLM2-135M-Instruct, CPU).

Each test keeps generations short (a few to ~24 tokens) so the suite stays quick on a
2-core machine; the model is loaded once per module.
"""

from __future__ import annotations

import math
import threading

import pytest

from reason import BackendError, Config, Continuation, GenerateRequest, SamplingParams, UsageError

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def backend():
    from reason.plugins.backends.transformers import TransformersBackend

    b = TransformersBackend(Config())
    b.load()  # once for the module
    yield b
    b.close()


def prompt(backend, question: str) -> str:
    return backend.format_prompt([{"role": "user", "content": question}])


def greedy(max_tokens: int = 16, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, **kw)


def one(backend, text: str, params: SamplingParams, n: int = 1):
    return backend.generate([GenerateRequest(text, params, n=n)])[0]


def exact_on_cpu_only(request, backend) -> None:
    """Results independent of the batch's shape (and logprobs equal to a plain forward pass
    within 2e-4) are a CPU float32 property. On CUDA in bfloat16 the kernels change with the
    batch's shape: on an H200, greedy text diverged at token 5 between a batch of 2 and a
    batch of 1, and prefix-cache logprobs by 0.05. There these tests are expected failures."""
    if backend.device.type != "cpu":
        request.applymarker(pytest.mark.xfail(reason="CUDA bf16 kernels are not batch-invariant", strict=False))


def test_registered_under_transformers():
    from reason import get_registry
    from reason.plugins.backends.transformers import TransformersBackend

    built = get_registry().create("backend", "transformers", Config(options={"max_batch": 3}))
    assert isinstance(built, TransformersBackend)
    assert built.max_batch == 3 and built.model_name == "SmolLM2-135M-Instruct"


def test_missing_model_path_is_a_usage_error():
    from reason.plugins.backends.transformers import TransformersBackend

    with pytest.raises(UsageError, match="does not exist"):
        TransformersBackend(Config(model="/no/such/model.gguf"))


def test_bad_option_is_a_usage_error():
    from reason.plugins.backends.transformers import TransformersBackend

    with pytest.raises(UsageError, match="max_batch"):
        TransformersBackend(Config(options={"max_batch": 0}))
    with pytest.raises(UsageError, match="prefix_cache_tokens"):
        TransformersBackend(Config(options={"prefix_cache_tokens": "lots"}))


def test_format_prompt_uses_the_chat_template(backend):
    text = prompt(backend, "What is 2+2?")
    assert "What is 2+2?" in text
    assert text.endswith("<|im_start|>assistant\n")
    # the template writes BOS itself; encoding must not add a second one
    ids = backend.encode(text)
    assert ids[0] == backend.tokenizer.bos_token_id and ids[1] != backend.tokenizer.bos_token_id


def test_one_call_batches_requests_with_different_params(backend):
    p1 = prompt(backend, "What is 2+3? Think step by step.")
    p2 = prompt(backend, "Name a color.")
    requests = [
        GenerateRequest(p1, greedy(12)),
        GenerateRequest(p2, SamplingParams(temperature=0.9, top_p=0.9, max_tokens=10, seed=3), n=3),
        GenerateRequest(p1, greedy(5, stop=(" ",))),
        GenerateRequest(p2, greedy(20, logprobs=2)),
    ]
    before = backend.stats.requests, backend.stats.decode_steps, backend.stats.decode_rows
    out = backend.generate(requests)
    assert backend.stats.requests == before[0] + 4
    # all six sequences decoded together: the first step carries every row
    steps, rows = backend.stats.decode_steps - before[1], backend.stats.decode_rows - before[2]
    assert rows > steps and steps <= 20
    assert [len(r) for r in out] == [1, 3, 1, 1]
    assert out[0][0].num_tokens <= 12 and out[1][0].num_tokens <= 10 and out[2][0].num_tokens <= 5
    assert all(len(t) == 2 for t in out[3][0].top_logprobs)
    assert all(len(t) == 5 for t in out[0][0].top_logprobs)
    # each request's prompt length is reported
    assert out[0][0].prompt_tokens == len(backend.encode(p1))
    assert out[1][2].prompt_tokens == len(backend.encode(p2))
    # greedy results do not depend on what else was in the batch
    assert out[0][0].token_ids == one(backend, p1, greedy(12))[0].token_ids
    assert out[3][0].token_ids == one(backend, p2, greedy(20, logprobs=2))[0].token_ids


def test_stop_string_cuts_text_right_after_it(backend):
    p = prompt(backend, "Write three short sentences about the sea.")
    full = one(backend, p, greedy(24))[0].text
    for stop in (" ", "."):
        assert stop in full, "the unstopped text should contain the stop string"
        c = one(backend, p, greedy(24, stop=(stop,)))[0]
        assert c.finish_reason == "stop"
        assert c.text.endswith(stop)
        assert stop not in c.text[: -len(stop)]
        assert c.text == full[: full.index(stop) + len(stop)]
    # of several stop strings, the first one to appear in the text wins (not the first listed)
    c = one(backend, p, greedy(24, stop=(".", " ")))[0]
    assert c.text == full[: min(full.index("."), full.index(" ")) + 1]


def test_max_tokens_is_exact(backend):
    p = prompt(backend, "Write a long story about a dragon.")
    for limit in (1, 7):
        c = one(backend, p, greedy(limit))[0]
        assert c.finish_reason == "length"
        assert c.num_tokens == limit == len(c.logprobs) == len(c.top_logprobs)
    sampled = one(backend, p, SamplingParams(temperature=1.0, max_tokens=6, seed=1), n=2)
    assert [c.num_tokens for c in sampled] == [6, 6]


def test_eos_ends_the_completion(backend):
    c = one(backend, prompt(backend, "What is the capital of France? Answer in one word."), greedy(24))[0]
    assert c.finish_reason == "eos" and c.finished
    assert c.token_ids[-1] in backend.loop.loaded.eos_ids
    assert "<|im_end|>" not in c.text and "Paris" in c.text


def test_logprobs_are_true_model_logprobs(request, backend):
    exact_on_cpu_only(request, backend)
    import torch

    p = prompt(backend, "Count to five.")
    c = one(backend, p, SamplingParams(temperature=1.3, max_tokens=10, seed=11, logprobs=4))[0]
    assert len(c.logprobs) == len(c.top_logprobs) == c.num_tokens == 10
    for chosen, top in zip(c.logprobs, c.top_logprobs):
        assert math.isfinite(chosen) and chosen <= 0
        assert len(top) == 4 and all(math.isfinite(x) for x in top)
        assert list(top) == sorted(top, reverse=True)
        assert chosen <= top[0] + 1e-5
    # they match a plain forward pass over prompt + completion, at temperature 1.3 too:
    # logprobs are taken before temperature scaling
    ids = backend.encode(p) + list(c.token_ids)
    with torch.inference_mode():
        logits = backend.model(torch.tensor([ids], device=backend.device)).logits[0].float()
    reference = torch.log_softmax(logits, dim=-1)
    start = len(ids) - c.num_tokens - 1
    for i, token in enumerate(c.token_ids):
        row = reference[start + i]
        assert c.logprobs[i] == pytest.approx(float(row[token]), abs=2e-4)
        assert list(c.top_logprobs[i]) == pytest.approx(row.topk(4).values.tolist(), abs=2e-4)


def test_hidden_states_of_every_generated_token_come_with_the_completion(request, backend):
    """Asked for layers, the backend returns each generated token's states from the decode
    passes it ran (the last token runs once more): equal to a plain forward pass over
    prompt + completion, and the samples themselves are the same as without."""
    exact_on_cpu_only(request, backend)
    import attrs
    import torch

    p = prompt(backend, "Count to five.")
    plain_params = SamplingParams(temperature=1.0, max_tokens=12, seed=5)
    plain = one(backend, p, plain_params, n=2)
    asked = one(backend, p, attrs.evolve(plain_params, hidden_layers=(8, 4)), n=2)
    assert [c.token_ids for c in asked] == [c.token_ids for c in plain]
    assert all(c.hidden is None for c in plain)
    for c in asked:
        assert tuple(c.hidden.shape) == (c.num_tokens, 2, 576)  # layers ascending: 4, then 8
        ids = backend.encode(p) + list(c.token_ids)
        with torch.inference_mode():
            states = backend.model(torch.tensor([ids], device=backend.device), output_hidden_states=True).hidden_states
        for j, layer in enumerate((4, 8)):
            expected = states[layer][0, -c.num_tokens :].float()
            assert torch.allclose(c.hidden[:, j].float(), expected, atol=2e-3, rtol=1e-3)
    eos = one(backend, p, greedy(200, hidden_layers=(4,)))[0]  # ends on EOS: that token's state too
    assert eos.finish_reason == "eos" and eos.hidden.shape[0] == eos.num_tokens
    with pytest.raises(BackendError, match="layer 99; SmolLM2-135M-Instruct has 30"):
        one(backend, p, greedy(4, hidden_layers=(99,)))


def test_no_logprobs_when_k_is_zero(backend):
    c = one(backend, prompt(backend, "Hi"), greedy(4, logprobs=0))[0]
    assert c.top_logprobs == ((),) * c.num_tokens
    assert len(c.logprobs) == c.num_tokens  # the chosen token's logprob is always there


def test_temperature_zero_is_deterministic(request, backend):
    exact_on_cpu_only(request, backend)
    p = prompt(backend, "Tell me a fact about cats.")
    first = one(backend, p, greedy(12), n=2)
    again = one(backend, p, greedy(12))
    assert first[0].token_ids == first[1].token_ids == again[0].token_ids
    # top_p that keeps only the most likely token is greedy too
    nucleus = one(backend, p, SamplingParams(temperature=1.0, top_p=1e-6, max_tokens=12, seed=5))
    assert nucleus[0].token_ids == again[0].token_ids


def test_seeds_reproducible_and_independent_of_the_batch(request, backend):
    exact_on_cpu_only(request, backend)
    p = prompt(backend, "Invent a name for a cat.")
    params = SamplingParams(temperature=1.0, max_tokens=12, seed=7)
    alone = one(backend, p, params, n=3)
    other = prompt(backend, "Describe the weather in a very long sentence please.")
    batched = backend.generate(
        [
            GenerateRequest(other, SamplingParams(temperature=0.7, max_tokens=16, seed=1), n=2),
            GenerateRequest(p, params, n=3),
            GenerateRequest(p, greedy(8)),
        ]
    )[1]
    assert [c.token_ids for c in batched] == [c.token_ids for c in alone]
    assert [c.text for c in batched] == [c.text for c in alone]
    # the n samples of one request are different draws
    assert len({c.token_ids for c in alone}) > 1
    # another seed gives other samples
    reseeded = one(backend, p, SamplingParams(temperature=1.0, max_tokens=12, seed=8), n=3)
    assert [c.token_ids for c in reseeded] != [c.token_ids for c in alone]


def test_max_batch_does_not_change_results():
    from reason.plugins.backends.transformers import TransformersBackend

    small = TransformersBackend(Config(options={"max_batch": 2, "prefix_cache_tokens": 0}))
    big = TransformersBackend(Config(options={"max_batch": 16, "prefix_cache_tokens": 0}))
    assert small.model is big.model  # one copy of the model per process
    requests = [
        GenerateRequest(prompt(small, q), greedy(8), n=n)
        for q, n in (("Say hello.", 2), ("What is 3*3?", 1), ("Name a fruit.", 2))
    ]
    a, b = small.generate(requests), big.generate(requests)
    assert [[c.token_ids for c in r] for r in a] == [[c.token_ids for c in r] for r in b]
    assert small.stats.forward_passes > big.stats.forward_passes  # 5 sequences in 3 chunks vs 1


def test_prefix_cache_gives_the_same_generations(request):
    """A beam-like workload: each round continues the previous round's paths. With the
    prefix cache the backend encodes far fewer prompt tokens and produces the same text."""
    from reason.plugins.backends.transformers import TransformersBackend

    cached = TransformersBackend(Config(options={"prefix_cache_tokens": 4096}))
    plain = TransformersBackend(Config(options={"prefix_cache_tokens": 0}))
    base = prompt(cached, "Janet has 3 apples and buys 4 more. How many apples does she have? Think step by step.")
    results = {}
    for name, b in (("cached", cached), ("plain", plain)):
        paths = [base, base]
        outputs = []
        for round_ in range(3):
            requests = [
                GenerateRequest(path, SamplingParams(temperature=0.8, max_tokens=8, seed=round_ * 10 + i))
                for i, path in enumerate(paths)
            ]
            completions = [r[0] for r in b.generate(requests)]
            outputs.append([(c.token_ids, c.text, c.logprobs) for c in completions])
            paths = [path + c.text for path, c in zip(paths, completions)]
        results[name] = outputs
    exact_on_cpu_only(request, cached)  # loaded by now
    for got, want in zip(results["cached"], results["plain"]):
        for (ids_a, text_a, lp_a), (ids_b, text_b, lp_b) in zip(got, want):
            assert ids_a == ids_b and text_a == text_b
            assert lp_a == pytest.approx(lp_b, abs=2e-4)
    assert plain.stats.reused_tokens == 0
    assert cached.stats.reused_tokens > 0
    assert cached.stats.prefill_tokens < plain.stats.prefill_tokens
    assert cached.stats.prefill_tokens + cached.stats.reused_tokens == plain.stats.prefill_tokens


def test_samples_of_one_prompt_share_one_prefill(backend):
    p = prompt(backend, "A question that nobody asked before: why is the sky blue?")
    backend.prefix_cache.clear()
    before = backend.stats.prefill_tokens
    one(backend, p, SamplingParams(temperature=0.8, max_tokens=4, seed=2), n=4)
    assert backend.stats.prefill_tokens - before == len(backend.encode(p))


def test_each_sample_says_how_many_prompt_tokens_it_did_not_encode(backend):
    p = prompt(backend, "Another question nobody asked: why is grass green?")
    backend.prefix_cache.clear()
    first = one(backend, p, SamplingParams(temperature=0.8, max_tokens=4, seed=2), n=3)
    length = len(backend.encode(p))
    # the first sample encoded the prompt; its siblings shared that pass
    assert [c.cached_tokens for c in first] == [0, length, length] and first[0].prompt_tokens == length
    (again,) = one(backend, p, SamplingParams(temperature=0.8, max_tokens=4, seed=3))
    assert again.cached_tokens == length - 1  # all but the last token, whose logits are needed


def test_a_watch_stops_a_sample_where_it_says_and_its_tokens_do_not_move(request, backend):
    exact_on_cpu_only(request, backend)
    from reason import Watch

    p = prompt(backend, "Write a long story about a dragon who learns to fly.")
    params = SamplingParams(temperature=0.8, max_tokens=40, seed=11)
    (full,) = one(backend, p, params)
    assert full.num_tokens == 40  # the story goes on past where the watch stops it
    checked = []

    def stop(so_far):
        checked.append(so_far.num_tokens)
        return so_far.num_tokens >= 16

    (watched,) = backend.generate([GenerateRequest(p, params, watch=Watch(every=8, stop=stop))])[0]
    assert checked == [8, 16]
    assert watched.finish_reason == "length" and watched.num_tokens == 16
    assert watched.token_ids == full.token_ids[:16]
    assert watched.logprobs == pytest.approx(full.logprobs[:16], abs=1e-4)  # the 2nd run reuses the cached prompt
    assert full.text.startswith(watched.text)


def test_a_failing_watch_fails_its_own_request_only(backend):
    from reason import Watch
    from reason.errors import BackendError

    def broken(so_far):
        raise ValueError("no")

    p = prompt(backend, "Say hello.")
    bad = backend.submit(GenerateRequest(p, SamplingParams(max_tokens=12, seed=1), watch=Watch(every=2, stop=broken)))
    good = backend.submit(GenerateRequest(p, SamplingParams(max_tokens=12, seed=2)))
    with pytest.raises(BackendError, match="watch failed: ValueError: no"):
        bad.result(timeout=120)
    assert good.result(timeout=120)[0].num_tokens >= 1


def test_prefix_cache_is_bounded():
    from reason.plugins.backends.transformers import TransformersBackend

    b = TransformersBackend(Config(options={"prefix_cache_tokens": 60}))
    for q in ("First question here?", "Second question here?", "Third one?"):
        b.generate([GenerateRequest(prompt(b, q), greedy(6))])
        assert b.prefix_cache.tokens <= 60
    assert len(b.prefix_cache) == 1  # each entry is ~40 tokens: only the newest fits


# -- a path's next step (GenerateRequest.continues): read as sampled, joined without a pass --


def test_the_engine_reads_a_path_as_the_tokens_sampled_not_its_text_encoded_again(backend):
    head = prompt(backend, "Write two short lines.")
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


def test_a_next_step_joins_the_running_batch_without_a_pass_and_samples_the_same(backend):
    head = prompt(backend, "Janet has 3 apples and buys 4 more. How many apples? Think step by step.")
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
        GenerateRequest(prompt(backend, "Count from one to fifty."), SamplingParams(temperature=0, max_tokens=64)),
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


def test_a_next_step_takes_a_finished_rows_place_without_copying_the_batch(monkeypatch):
    from reason.plugins.backends.transformers import TransformersBackend
    from reason.plugins.backends.transformers_sequences import Batch

    backend = TransformersBackend(Config(options={"max_batch": 2}))
    try:
        head = prompt(backend, "Tom has 5 pens and loses 2. How many pens? Think step by step.")
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
        long = GenerateRequest(prompt(backend, f"{story} Count the loaves."), SamplingParams(temperature=0, max_tokens=48))
        short = GenerateRequest(prompt(backend, "Say hi."), SamplingParams(temperature=0, max_tokens=3))
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
