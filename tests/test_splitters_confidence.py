import math

import pytest

from reason import Config, SamplingParams, Score, ScoreRequest, Step, Task
from reason.errors import UsageError
from reason.plugins.splitters import LineSplitter, MiniStepSplitter, NoSplitter, StepSplitter
from reason.plugins.verifiers.confidence import ConfidenceVerifier, token_confidence


def test_step_splitter_params_and_split_roundtrip():
    splitter = StepSplitter(Config(step_tokens=64))
    params = splitter.step_params(SamplingParams(max_tokens=500, stop=("END",)))
    assert params.stop == ("END", "\n\n") and params.max_tokens == 64
    text = "a\n\nb\n\n\nc"
    assert splitter.split(text) == ["a\n\n", "b\n\n\n", "c"]
    assert "".join(splitter.split(text)) == text


def test_line_and_none_splitters():
    assert LineSplitter(Config()).split("x\ny\n") == ["x\n", "y\n"]
    assert NoSplitter(Config()).step_params(SamplingParams(max_tokens=9)).stop == ()
    assert NoSplitter(Config()).split("abc") == ["abc"]


def test_ministep_sets_the_token_count():
    assert MiniStepSplitter(Config(), "64").step_params(SamplingParams(max_tokens=500)).max_tokens == 64
    assert MiniStepSplitter(Config(), None).tokens == 32
    with pytest.raises(UsageError, match="ministep:32"):
        MiniStepSplitter(Config(), "many")


def test_token_confidence_formula():
    top = [math.log(0.5), math.log(0.2), math.log(0.1), math.log(0.1), math.log(0.05)]
    # c = exp(p_i) / sum_k exp(p_k) over the top-5
    assert math.isclose(token_confidence(math.log(0.5), top), 0.5 / 0.95)
    assert math.isclose(token_confidence(math.log(0.2), top), 0.2 / 0.95)
    # a sampled token outside the top-k replaces the weakest alternative
    assert math.isclose(token_confidence(math.log(0.01), top), 0.01 / (0.5 + 0.2 + 0.1 + 0.1 + 0.01))


def test_confidence_verifier_scores_each_step_and_skips_injected_text():
    lp = math.log(0.5)
    top = (lp, math.log(0.25), math.log(0.25))
    steps = (
        Step("a", token_ids=(1, 2), logprobs=(lp, lp), top_logprobs=(top, top)),
        Step("Wait!", injected=True),
        Step("b", token_ids=(3,), logprobs=(math.log(0.25),), top_logprobs=(top,)),
    )
    (score,) = ConfidenceVerifier(Config()).score([ScoreRequest(task=Task("q"), prompt="p", steps=steps)])
    assert isinstance(score, Score)
    assert score.step_scores == pytest.approx((0.5, 0.5, 0.25))
