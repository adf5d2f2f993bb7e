"""The ``vllm`` backend.

The mapping from vLLM's outputs to ours is tested everywhere with objects shaped like
``vllm.RequestOutput`` / ``CompletionOutput`` / ``Logprob``; the engine itself only where
vllm imports and a CUDA GPU is visible (``-m gpu``), and those tests skip cleanly
elsewhere.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest

from reason import BackendError, Config, GenerateRequest, Runtime, SamplingParams, UsageError, get_registry
from reason.plugins.backends import vllm as vllm_backend
from reason.plugins.backends.vllm import (
    VLLMBackend,
    completions_from_output,
    finish_reason,
    logprobs_from_positions,
    sampling_kwargs,
)

HAVE_VLLM = importlib.util.find_spec("vllm") is not None


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


needs_gpu = pytest.mark.skipif(not (HAVE_VLLM and _cuda()), reason="needs vllm installed and a CUDA GPU")


def Logprob(value: float, rank: int | None = None):
    return SimpleNamespace(logprob=value, rank=rank, decoded_token=None)


def output(text, token_ids, logprobs, finish="stop", stop_reason=None, index=0):
    return SimpleNamespace(
        index=index, text=text, token_ids=token_ids, cumulative_logprob=None, logprobs=logprobs,
        finish_reason=finish, stop_reason=stop_reason,
    )


def test_registered_lazily():
    registration, _ = get_registry().lookup("backend", "vllm")
    assert getattr(registration.factory, "target", "").endswith("vllm:VLLMBackend")


def test_sampling_params_mapping():
    params = SamplingParams(temperature=0.6, top_p=0.95, max_tokens=32, stop=("\n\n",), seed=3, logprobs=5)
    kwargs = sampling_kwargs(params, 4)
    assert kwargs == dict(
        n=4, temperature=0.6, top_p=0.95, max_tokens=32, stop=["\n\n"],
        include_stop_str_in_output=True, logprobs=5, seed=3,
    )
    assert sampling_kwargs(SamplingParams(), 1)["stop"] is None and "seed" not in sampling_kwargs(SamplingParams(), 1)


@pytest.mark.parametrize(
    "reason, stop_reason, expected",
    [
        ("length", None, "length"),
        ("stop", "\n\n", "stop"),  # a stop string matched
        ("stop", None, "eos"),  # EOS
        ("stop", 2, "eos"),  # a stop token id (e.g. <|im_end|> from generation_config)
    ],
)
def test_finish_reason(reason, stop_reason, expected):
    assert finish_reason(reason, stop_reason) == expected


def test_logprobs_sampled_token_outside_the_top_k():
    # vLLM puts the top-k in each position's dict, plus the sampled token when it is not
    # among them (then k+1 entries).
    positions = [
        {5: Logprob(-0.1, 1), 6: Logprob(-2.5, 2)},
        {9: Logprob(-0.3, 1), 8: Logprob(-1.9, 2), 7: Logprob(-4.0, 5)},
    ]
    chosen, top = logprobs_from_positions([5, 7], positions, 2)
    assert chosen == [-0.1, -4.0]
    assert top == [[-0.1, -2.5], [-0.3, -1.9]]


def test_logprobs_k_zero_and_missing():
    chosen, top = logprobs_from_positions([5], [{5: Logprob(-0.7, 3)}], 0)
    assert chosen == [-0.7] and top == [[]]
    chosen, top = logprobs_from_positions([1, 2], None, 3)
    assert chosen == [0.0, 0.0] and top == [[], []]


def test_request_output_to_completions():
    request = GenerateRequest(prompt="p", params=SamplingParams(stop=("\n\n",), logprobs=1), n=2)
    ro = SimpleNamespace(
        prompt_token_ids=[1, 2, 3, 4],
        outputs=[
            output("b.", [11, 12], [{11: Logprob(-0.2, 1)}, {12: Logprob(-0.4, 1)}], "stop", None, index=1),
            output("a\n\n", [10, 13], [{10: Logprob(-0.5, 1)}, {13: Logprob(-0.6, 1)}], "stop", "\n\n", index=0),
        ],
    )
    first, second = completions_from_output(ro, request)
    assert (first.text, first.finish_reason, first.token_ids) == ("a\n\n", "stop", (10, 13))
    assert (second.text, second.finish_reason) == ("b.", "eos") and second.finished
    assert first.prompt_tokens == 4 and first.logprobs == (-0.5, -0.6) and first.top_logprobs == ((-0.5,), (-0.6,))


def test_wrong_number_of_outputs_is_a_backend_error():
    request = GenerateRequest(prompt="p", n=2)
    ro = SimpleNamespace(prompt_token_ids=[1], outputs=[output("a", [1], None)])
    with pytest.raises(BackendError, match="asked for 2"):
        completions_from_output(ro, request)


class FakeTokenizer:
    """Characters are tokens; ``<s>`` is BOS (id 1), added in front with special tokens."""

    bos_token = "<s>"

    def __call__(self, text, add_special_tokens=True):
        ids = [ord(c) for c in text.replace("<s>", chr(1))]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "<s>PROMPT:"


class FakeLLM:
    """Records ``generate`` calls; answers each prompt with n outputs."""

    def __init__(self) -> None:
        self.calls = []

    def get_tokenizer(self):
        return FakeTokenizer()

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append((list(prompts), list(sampling_params)))
        return [
            SimpleNamespace(
                prompt_token_ids=[0] * 3,
                outputs=[
                    output("The answer is \\boxed{4}.", [1, 2, 3], [{t: Logprob(-0.1, 1)} for t in (1, 2, 3)], index=i)
                    for i in range(sp.n)
                ],
            )
            for sp in sampling_params
        ]


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in ``vllm`` module (SamplingParams only) and a FakeLLM engine."""
    import sys

    module = SimpleNamespace(SamplingParams=lambda **kw: SimpleNamespace(**kw))
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: True)
    return FakeLLM()


def test_one_generate_per_tick_with_per_request_params(fake_vllm):
    backend = VLLMBackend(Config(backend="vllm"))
    backend._llm = fake_vllm
    reqs = [
        GenerateRequest(prompt="a", params=SamplingParams(max_tokens=5, stop=("\n",)), n=2),
        GenerateRequest(prompt="b", params=SamplingParams(max_tokens=7), n=1),
    ]
    out = backend.generate(reqs)
    assert [len(x) for x in out] == [2, 1]
    assert len(fake_vllm.calls) == 1
    prompts, params = fake_vllm.calls[0]
    assert prompts == [{"prompt_token_ids": [1, ord("a")]}, {"prompt_token_ids": [1, ord("b")]}]
    assert [p.n for p in params] == [2, 1] and [p.max_tokens for p in params] == [5, 7]
    assert all(p.include_stop_str_in_output for p in params)


def test_a_templated_prompt_reaches_vllm_with_one_bos(fake_vllm):
    """vLLM adds special tokens to string prompts; a chat template that writes BOS itself
    would start with two. The backend sends token ids with exactly one."""
    backend = VLLMBackend(Config(backend="vllm"))
    backend._llm = fake_vllm
    text = backend.format_prompt([{"role": "user", "content": "hi"}])
    backend.generate([GenerateRequest(prompt=text)])
    (sent,), _ = fake_vllm.calls[0]
    assert sent["prompt_token_ids"] == [1, *map(ord, "PROMPT:")]


def test_runtime_batches_a_search_into_vllm_calls(fake_vllm):
    config = Config(backend="vllm", search="best-of-n", n=4)
    backend = VLLMBackend(config)
    backend._llm = fake_vllm
    with Runtime(config, backend=backend) as rt:
        solutions = rt.solve_many(["What is 2+2?", "And 3+1?"])
    assert [s.answer for s in solutions] == ["4", "4"]
    assert len(fake_vllm.calls) == 1 and len(fake_vllm.calls[0][0]) == 2  # both tasks, one call


def test_bad_options_are_usage_errors(fake_vllm):
    with pytest.raises(UsageError, match="tensor_parallel_size"):
        VLLMBackend(Config(backend="vllm", options={"tensor_parallel_size": "two"}))
    with pytest.raises(UsageError, match="gpu_memory_utilization"):
        VLLMBackend(Config(backend="vllm", options={"gpu_memory_utilization": 1.5}))


@pytest.mark.skipif(HAVE_VLLM, reason="vllm is installed here")
def test_missing_vllm_says_how_to_install():
    with pytest.raises(UsageError, match=r"pip install 'reason-runtime\[vllm\]'"):
        VLLMBackend(Config(backend="vllm"))
    with pytest.raises(UsageError, match="reason-runtime\\[vllm\\]"):
        Runtime(Config(backend="vllm")).backend


def test_no_gpu_is_a_clear_error(fake_vllm, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendError, match="CUDA GPU"):
        VLLMBackend(Config(backend="vllm")).generate([GenerateRequest(prompt="x")])


# -- the real engine (GPU machines only) ---------------------------------------------------------


@pytest.fixture(scope="module")
def engine():
    backend = VLLMBackend(Config(backend="vllm", seed=0, options={"gpu_memory_utilization": 0.3, "max_model_len": 2048}))
    yield backend
    backend.close()


@pytest.mark.gpu
@needs_gpu
def test_real_vllm_stop_strings_logprobs_and_eos(engine):
    prompt = engine.format_prompt([{"role": "user", "content": "Count from 1 to 20, one number per line."}])
    params = SamplingParams(temperature=0.0, max_tokens=40, stop=("\n",), logprobs=3)
    (out,) = engine.generate([GenerateRequest(prompt=prompt, params=params, n=2)])
    for c in out:
        assert c.finish_reason == "stop" and c.text.endswith("\n")
        assert len(c.logprobs) == c.num_tokens == len(c.top_logprobs) > 0
        assert all(len(t) == 3 and list(t) == sorted(t, reverse=True) for t in c.top_logprobs)
    (short,) = engine.generate([GenerateRequest(prompt=prompt, params=SamplingParams(max_tokens=2), n=1)])
    assert short[0].finish_reason == "length" and short[0].num_tokens == 2
    hi = engine.format_prompt([{"role": "user", "content": "Say hi."}])
    (full,) = engine.generate([GenerateRequest(prompt=hi, params=SamplingParams(temperature=0.0, max_tokens=300))])
    assert full[0].finish_reason == "eos"


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("search", get_registry().names("search"))
def test_real_vllm_every_strategy(engine, search):
    config = Config(backend="vllm", search=search, n=2, beam_width=2, max_tokens=96, max_steps=3, seed=0)
    solution = Runtime(config, backend=engine).solve("What is 3 + 4?")  # not closed: the engine is shared
    assert solution.usage.completion_tokens > 0 and solution.candidates
