"""PRM input formats: the token at every read position is the one the model card reads.

These use the embedded model's tokenizer (SmolLM2, a ChatML template like Qwen's). Where a
real PRM has a single-token tag ("ки" for Math-Shepherd's Mistral tokenizer, "<extra_0>"
for Qwen's), a copy of the tokenizer gets that tag added as a token, so both the
multi-token and the single-token cases are checked.
"""

import copy

import pytest

from reason.errors import UsageError
from reason.plugins.backends.models import load_tokenizer
from reason.plugins.verifiers.prm_formats import (
    QWEN_SYSTEM,
    GenericFormat,
    MathShepherdFormat,
    QwenFormat,
    RLHFlowFormat,
    guess_format,
    FormatOptions,
    make_format,
)

QUESTION = "Tom has 3 apples and buys 5 more. How many apples does he have?"
STEPS = [
    "Tom starts with 3 apples.\n\n",
    "He buys 5 more, so 3 + 5 = 8.\n\n",
    "The answer is \\boxed{8}.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


@pytest.fixture(scope="module")
def tagged_tokenizer(tokenizer):
    """A copy with the tags of real PRM tokenizers as single tokens."""
    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    tok.add_tokens(["ки"])
    return tok


def decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=False)


def test_generic_reads_at_each_separator(tokenizer):
    encoded = GenericFormat().encode(tokenizer, QUESTION, STEPS)
    ids, positions = encoded.input_ids, encoded.positions
    assert len(positions) == len(STEPS) and list(positions) == sorted(set(positions))
    assert positions[-1] == len(ids) - 1  # the last separator closes the input
    assert decode(tokenizer, ids).startswith(QUESTION + "\n")
    for step, pos in zip(STEPS, positions):
        upto = decode(tokenizer, ids[: pos + 1])
        assert upto.endswith(step.strip() + "\n\n"), upto[-40:]
        assert decode(tokenizer, [ids[pos]]).endswith("\n")


def test_generic_custom_separator_reads_its_last_visible_character(tokenizer):
    fmt = make_format("generic", FormatOptions(separator=" ки\\n", good_token="+", bad_token="-"))
    assert fmt.separator == " ки\n"  # the CLI's escaped \n means a newline
    encoded = fmt.encode(tokenizer, QUESTION, STEPS)
    for step, pos in zip(STEPS, encoded.positions):
        # "ки" is two tokens here: the read is at the second, never at the newline after it
        assert decode(tokenizer, encoded.input_ids[: pos + 1]).endswith(step.strip() + " ки")
    good, bad = fmt.labels(tokenizer)
    assert (decode(tokenizer, [good]), decode(tokenizer, [bad])) == ("+", "-")


def test_math_shepherd_layout_and_tags(tokenizer, tagged_tokenizer):
    fmt = MathShepherdFormat()
    for tok in (tokenizer, tagged_tokenizer):
        encoded = fmt.encode(tok, QUESTION, STEPS)
        text = decode(tok, encoded.input_ids)
        expected = QUESTION + " " + "\n".join(s.strip() + " ки" for s in STEPS) + "\n"
        assert text == expected
        for step, pos in zip(STEPS, encoded.positions):
            assert decode(tok, encoded.input_ids[: pos + 1]).endswith(step.strip() + " ки")
    tag = tagged_tokenizer.convert_tokens_to_ids("ки")
    encoded = fmt.encode(tagged_tokenizer, QUESTION, STEPS)
    assert [encoded.input_ids[p] for p in encoded.positions] == [tag] * len(STEPS)
    # the card's labels are the tokens that follow a tag: " +" and " -"
    good, bad = fmt.labels(tokenizer)
    assert (decode(tokenizer, [good]), decode(tokenizer, [bad])) == (" +", " -")


def test_math_shepherd_drops_tags_inside_steps(tokenizer):
    encoded = MathShepherdFormat().encode(tokenizer, QUESTION, ["a ки b\n\n", "c"])
    assert decode(tokenizer, encoded.input_ids).count("ки") == 2


def test_rlhflow_reads_where_each_plus_is_predicted(tokenizer):
    fmt = RLHFlowFormat()
    encoded = fmt.encode(tokenizer, QUESTION, STEPS)
    ids, positions = encoded.input_ids, encoded.positions
    plus, minus = fmt.labels(tokenizer)
    assert (decode(tokenizer, [plus]), decode(tokenizer, [minus])) == ("+", "-")
    assert len(positions) == len(STEPS)
    for k, pos in enumerate(positions):
        assert ids[pos + 1] == plus  # the next token is the assistant's "+"
        assert decode(tokenizer, [ids[pos + 2]]) == "<|im_end|>"
        before = decode(tokenizer, ids[: pos + 1])
        assert before.endswith("<|im_start|>assistant\n")
        user_turn = STEPS[k].strip() if k else QUESTION + " " + STEPS[0].strip()
        assert before.endswith(f"<|im_start|>user\n{user_turn}<|im_end|>\n<|im_start|>assistant\n")
    assert decode(tokenizer, ids).count("<|im_start|>assistant\n+<|im_end|>") == len(STEPS)


def test_qwen_reads_at_each_extra_0(tokenizer, tagged_tokenizer):
    fmt = QwenFormat()
    assert fmt.head == "classifier"
    tag = tagged_tokenizer.convert_tokens_to_ids("<extra_0>")
    encoded = fmt.encode(tagged_tokenizer, QUESTION, STEPS)
    assert [encoded.input_ids[p] for p in encoded.positions] == [tag] * len(STEPS)
    text = decode(tagged_tokenizer, encoded.input_ids)
    assert text.startswith(f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>")
    assert "<|im_start|>assistant\n" + "".join(s.strip() + "<extra_0>" for s in STEPS) + "<|im_end|>" in text
    # untagged tokenizer: the tag is several tokens; the read is at its last one
    encoded = fmt.encode(tokenizer, QUESTION, STEPS)
    for step, pos in zip(STEPS, encoded.positions):
        assert decode(tokenizer, encoded.input_ids[: pos + 1]).endswith(step.strip() + "<extra_0>")


@pytest.mark.parametrize("fmt", [GenericFormat(), MathShepherdFormat(), RLHFlowFormat(), QwenFormat()], ids=lambda f: f.name)
def test_a_step_read_never_depends_on_later_steps(tokenizer, fmt):
    """What makes prefix caching exact: the tokens up to step k's read position are the
    same whether the path stops at step k or goes on."""
    full = fmt.encode(tokenizer, QUESTION, STEPS)
    for k in range(1, len(STEPS) + 1):
        part = fmt.encode(tokenizer, QUESTION, STEPS[:k])
        pos = part.positions[-1]
        assert part.positions == full.positions[:k]
        assert part.input_ids[: pos + 1] == full.input_ids[: pos + 1]


def test_empty_and_whitespace_steps_still_get_a_position(tokenizer, tagged_tokenizer):
    # (qwen's tag is a special token in its real tokenizer; two tags in a row stay apart)
    for fmt, tok in [(GenericFormat(), tokenizer), (MathShepherdFormat(), tokenizer), (RLHFlowFormat(), tokenizer), (QwenFormat(), tagged_tokenizer)]:
        encoded = fmt.encode(tok, QUESTION, ["first", "\n\n", "last"])
        assert len(encoded.positions) == 3 and list(encoded.positions) == sorted(set(encoded.positions))


def test_bad_generic_options_are_usage_errors(tokenizer):
    with pytest.raises(UsageError, match="-o prm.separator"):
        make_format("generic", FormatOptions(separator=""))
    with pytest.raises(UsageError, match="different"):
        make_format("generic", FormatOptions(good_token="+", bad_token="+"))
    with pytest.raises(UsageError, match="prm.good_token"):
        make_format("generic", FormatOptions(good_token="definitely correct")).labels(tokenizer)
    with pytest.raises(UsageError, match="unknown format 'orm'"):
        make_format("orm", FormatOptions())


def test_guess_format_from_model_names():
    assert guess_format("/models/Qwen2.5-Math-PRM-7B") == "qwen"
    assert guess_format("RLHFlow/Llama3.1-8B-PRM-Deepseek-Data") == "rlhflow"
    assert guess_format("peiyi9979/math-shepherd-mistral-7b-prm") == "math-shepherd"
    assert guess_format("Qwen/Qwen2.5-Math-1.5B-Instruct") == "generic"
