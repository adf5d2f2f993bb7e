"""The prm verifier: prefix cache, batching, reading scores, aggregation.

PRM weights cannot be downloaded here, so the real-model tests drive the generic and the
RLHFlow-style formats with the embedded SmolLM2 weights through exactly the code path a
real PRM takes. The numbers mean nothing; positions, batching, caching and aggregation
are what is checked, against an independent full forward pass where it matters.
"""

import math

import pytest
from scripted import ScriptedBackend

from reason import Config, Runtime, ScoreRequest, Step, Task
from reason.errors import UsageError
from reason.plugins.backends.models import load_model, load_tokenizer
from reason.plugins.verifiers.model_verifier import ScoreCache, ScoringStats, prefix_keys
from reason.plugins.verifiers.prm import PRMVerifier
from reason.plugins.verifiers.scoring import ModelReader, ReadResult, Row, read_scores
from reason.types import aggregate

QUESTION = "Tom has 3 apples and buys 5 more. How many apples does he have?"
STEPS = ["Tom starts with 3 apples.\n\n", "He buys 5 more: 3 + 5 = 8.\n\n", "The answer is \\boxed{8}."]
OTHER = ["Tom has 3 apples.\n\n", "3 * 5 = 15.\n\n", "The answer is \\boxed{15}."]


def request(steps, question=QUESTION):
    return ScoreRequest(task=Task(question=question), prompt="(policy prompt)", steps=[Step(text=s) for s in steps])


def verifier(**options):
    return PRMVerifier(Config(options={"prm_format": "generic", **options}))


# -- no model -----------------------------------------------------------------------------


def test_prefix_keys_are_a_chain_over_the_steps():
    keys = prefix_keys("ns", "q", ["a", "b", "c"])
    assert prefix_keys("ns", "q", ["a", "b"]) == keys[:2]
    assert prefix_keys("ns", "q", ["a", "x", "c"])[0] == keys[0]
    assert prefix_keys("ns", "q", ["a", "x", "c"])[1:] != keys[1:]
    assert prefix_keys("other", "q", ["a"]) != keys[:1]
    assert prefix_keys("ns", "q2", ["a"]) != keys[:1]
    # step boundaries matter: "ab" + "c" is not "a" + "bc"
    assert prefix_keys("ns", "q", ["ab", "c"])[1] != prefix_keys("ns", "q", ["a", "bc"])[1]


def test_prefix_cache_is_a_bounded_lru():
    cache = ScoreCache(capacity=2)
    cache.put(b"a", 0.1)
    cache.put(b"b", 0.2)
    assert cache.get(b"a") == 0.1  # a is now the most recent
    cache.put(b"c", 0.3)
    assert cache.get(b"b") is None and cache.get(b"a") == 0.1 and cache.get(b"c") == 0.3
    assert len(cache) == 2
    disabled = ScoreCache(capacity=0)
    disabled.put(b"a", 0.5)
    assert disabled.get(b"a") is None


def test_stats_hit_rate():
    stats = ScoringStats()
    call = stats.record(4, 6, 2, ReadResult(values=[], batches=1, tokens=100, reused=300), seconds=2.0)
    assert call["steps"] == 8 and call["reused_tokens"] == 300 and call["tokens"] == 100
    assert stats.hit_rate == 0.75 and stats.steps_per_second == 4.0
    assert stats.to_dict()["hit_rate"] == 0.75


def test_options_are_checked_before_any_model_loads():
    with pytest.raises(UsageError, match="prm_format"):
        PRMVerifier(Config(options={"prm_format": "orm"}))
    with pytest.raises(UsageError, match="prm_batch_size"):
        PRMVerifier(Config(options={"prm_batch_size": 0}))
    with pytest.raises(UsageError, match="does not exist"):
        PRMVerifier(Config(options={"prm_model": "/no/such/prm"}))
    with pytest.raises(UsageError, match="prm.separator"):
        PRMVerifier(Config(options={"prm_format": "generic", "prm_separator": ""}))


def test_qwen_format_refuses_a_gguf_model():
    with pytest.raises(UsageError, match="HF directory"):
        PRMVerifier(Config(options={"prm_format": "qwen"}))  # the embedded model is a .gguf


def test_unknown_format_through_the_runtime_is_a_usage_error():
    with pytest.raises(UsageError, match="prm_format='nope': must be one of auto, generic"):
        Runtime(Config(verifier="prm", options={"prm_format": "nope"}), backend=ScriptedBackend()).solve("q")
    with pytest.raises(UsageError, match=r"-o prm.format='nope': must be one of auto, generic.* \(an option of verifier prm\)"):
        Runtime(Config(verifier="prm", options={"prm": {"format": "nope"}}), backend=ScriptedBackend()).solve("q")


# -- the embedded model's weights ----------------------------------------------------------


@pytest.mark.model
def test_lm_read_matches_a_full_forward_softmax():
    """The gathered-hidden-state read equals softmax over the good/bad logits of an
    ordinary full forward at the same positions."""
    import torch

    prm = verifier()
    prm.load()
    tokenizer, model = load_tokenizer(None), load_model(None)
    encoded = prm.format.encode(tokenizer, QUESTION, STEPS)
    good, bad = prm.format.labels(tokenizer)
    (values,), batches = read_scores(
        model, [Row(list(encoded.input_ids), list(encoded.positions))], head="lm", labels=((good,), (bad,))
    )
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([encoded.input_ids], device=model.device)).logits[0]
    expected = [torch.softmax(logits[p, [good, bad]], dim=-1)[0].item() for p in encoded.positions]
    assert batches == 1
    assert values == pytest.approx(expected, abs=1e-5)
    assert prm.score([request(STEPS)])[0].step_scores == pytest.approx(expected, abs=1e-5)


@pytest.mark.model
@pytest.mark.parametrize("fmt", ["generic", "rlhflow"])
def test_a_batch_scores_like_one_by_one(fmt):
    paths = [STEPS, OTHER, STEPS[:1], OTHER[:2] + ["Wait, 3 + 5 = 8.\n\n"]]
    batched = verifier(prm_format=fmt, prm_batch_size=4)
    together = batched.score([request(p) for p in paths])
    assert batched.last_call["batches"] == 1
    alone = []
    for path in paths:
        single = verifier(prm_format=fmt)  # a fresh verifier: nothing cached
        alone.append(single.score([request(path)])[0])
    for a, b, path in zip(together, alone, paths):
        assert len(a.step_scores) == len(path)
        assert all(0.0 <= s <= 1.0 for s in a.step_scores)
        assert a.step_scores == pytest.approx(b.step_scores, abs=1e-5)
    # different paths really score differently (the reads are not all one constant)
    assert len({round(s, 6) for score in together for s in score.step_scores}) > 3


@pytest.mark.model
def test_batch_size_option_splits_the_forward_passes():
    prm = verifier(prm_batch_size=2)
    prm.score([request(STEPS[:1], question=f"q{i}") for i in range(5)])
    assert prm.last_call["batches"] == 3 and prm.last_call["computed"] == 5


@pytest.mark.model
def test_a_grown_path_only_computes_its_new_step():
    prm = verifier()
    first = prm.score([request(STEPS[:2])])[0]
    assert prm.last_call["computed"] == 2 and prm.last_call["cached"] == 0
    grown = prm.score([request(STEPS)])[0]
    assert prm.last_call["computed"] == 1 and prm.last_call["cached"] == 2
    assert grown.step_scores[:2] == first.step_scores
    # the cached prefix plus the fresh step equal a from-scratch scoring of the whole path
    fresh = verifier().score([request(STEPS)])[0]
    assert grown.step_scores == pytest.approx(fresh.step_scores, abs=1e-5)
    # scoring the same path again computes nothing
    assert prm.score([request(STEPS)])[0] == grown
    assert prm.last_call["computed"] == 0 and prm.last_call["batches"] == 0
    assert prm.stats.steps == 8 and prm.stats.cached == 5 and prm.stats.hit_rate == pytest.approx(5 / 8)


@pytest.mark.model
def test_shared_prefixes_in_one_call_are_computed_once():
    prm = verifier()
    siblings = [STEPS[:1] + [f"Then {i} more.\n\n"] for i in range(4)]
    scores = prm.score([request(p) for p in siblings])
    # 8 steps asked; the shared first step is computed once, each second step once
    assert prm.last_call["steps"] == 8 and prm.last_call["computed"] == 5 and prm.last_call["cached"] == 3
    assert len({s.step_scores[0] for s in scores}) == 1
    # same steps under another question are other prefixes
    prm.score([request(STEPS[:1], question="Another question?")])
    assert prm.last_call["computed"] == 1


@pytest.mark.model
def test_whitespace_around_steps_does_not_change_the_score():
    prm = verifier()
    a = prm.score([request(["  Tom starts with 3 apples.", "He buys 5 more: 3 + 5 = 8.\n\n\n"])])[0]
    assert prm.last_call["computed"] == 2
    b = prm.score([request(STEPS[:2])])[0]
    assert prm.last_call["computed"] == 0 and a == b


@pytest.mark.model
@pytest.mark.parametrize("how", ["last", "min", "prod", "mean"])
def test_best_of_n_reduces_step_scores_by_the_aggregation(how):
    """Whole solutions are cut into steps by the splitter, scored step by step by the PRM,
    and each candidate's score is the chosen reduction of its step scores."""
    texts = ["Tom has 3.\n\nHe buys 5: 3 + 5 = 8.\n\nThe answer is \\boxed{8}.",
             "3 * 5 = 15.\n\nThe answer is \\boxed{15}."]
    backend = ScriptedBackend(lambda req, i: texts[i % 2])
    config = Config(search="best-of-n", verifier="prm", n=2, aggregation=how, options={"prm_format": "generic"})
    with Runtime(config, backend=backend) as runtime:
        solution = runtime.solve(QUESTION)
        prm = runtime.verifier(runtime.config)
    assert [len(c.step_scores) for c in solution.candidates] == [3, 2]
    for candidate in solution.candidates:
        assert candidate.score == pytest.approx(aggregate(candidate.step_scores, how))
    direct = verifier().score([request(["Tom has 3.\n\n", "He buys 5: 3 + 5 = 8.\n\n", "The answer is \\boxed{8}."])])[0]
    assert solution.candidates[0].step_scores == pytest.approx(direct.step_scores, abs=1e-5)
    assert solution.score == max(c.score for c in solution.candidates)
    assert prm.stats.calls == 1 and prm.stats.steps == 5
    if how == "prod":
        assert solution.candidates[0].score == pytest.approx(math.prod(solution.candidates[0].step_scores))


@pytest.mark.model
def test_prm_verifier_name_argument_picks_the_model():
    from reason.plugins.backends.models import converted_dir, resolve_model

    folder = converted_dir(resolve_model("smollm2"))
    prm = PRMVerifier(Config(options={"prm_format": "generic"}), arg=str(folder))
    assert prm.source.kind == "dir" and prm.source.path == str(folder)
    assert len(prm.score([request(STEPS)])[0].step_scores) == 3


@pytest.mark.model
def test_qwen_format_reads_the_two_class_head_at_each_tag(monkeypatch):
    """The classifier path (Qwen2.5-Math-PRM's reward head) on real weights: SmolLM2 with
    a two-label token-classification head stands in for the custom Qwen head."""
    import torch

    from reason.plugins.verifiers import prm as prm_module

    head = load_model(None, model_class="AutoModelForTokenClassification")
    assert head.config.num_labels == 2
    monkeypatch.setattr(prm_module, "load_reward_head", lambda source, device, dtype: head)
    from reason.plugins.backends.models import converted_dir, resolve_model

    folder = str(converted_dir(resolve_model("smollm2")))
    prm = PRMVerifier(Config(options={"prm_format": "qwen", "prm_batch_size": 2, "prm_model": folder}))
    paths = [STEPS, OTHER[:2], ["Count them one by one.\n\n"]]
    scores = prm.score([request(p) for p in paths])
    assert prm.last_call["batches"] == 2
    tokenizer = load_tokenizer(None)
    for path, score in zip(paths, scores):
        encoded = prm.format.encode(tokenizer, QUESTION, path)
        with torch.inference_mode():
            logits = head(input_ids=torch.tensor([encoded.input_ids], device=head.device)).logits[0]
        expected = [torch.softmax(logits[p], dim=-1)[1].item() for p in encoded.positions]
        assert score.step_scores == pytest.approx(expected, abs=1e-5)
    grown = prm.score([request(OTHER)])[0]
    assert prm.last_call["computed"] == 1 and grown.step_scores[:2] == scores[1].step_scores


@pytest.mark.model
def test_a_grown_path_runs_only_its_new_tokens():
    """KV reuse: last round's keys and values of a path are spliced in, so the forward
    pass covers only the new step, and the scores equal a from-scratch forward."""
    prm = verifier()
    prm.score([request(STEPS[:2]), request(OTHER[:1])])
    first_tokens = prm.last_call["tokens"]
    assert prm.last_call["reused_tokens"] == 0
    grown = prm.score([request(STEPS), request(OTHER[:2])])
    tokenizer = load_tokenizer(None)
    full = [prm.format.encode(tokenizer, QUESTION, p).input_ids for p in (STEPS, OTHER[:2])]
    assert prm.last_call["tokens"] + prm.last_call["reused_tokens"] == sum(len(ids) for ids in full)
    assert prm.last_call["tokens"] < sum(len(ids) for ids in full) - first_tokens // 2
    assert prm.last_call["reused_tokens"] >= first_tokens - 2
    plain = verifier(prm_kv_cache_tokens=0, prm_cache_size=0)
    expected = plain.score([request(STEPS), request(OTHER[:2])])
    assert plain.last_call["reused_tokens"] == 0
    for a, b in zip(grown, expected):
        assert a.step_scores == pytest.approx(b.step_scores, abs=1e-4)


@pytest.mark.model
def test_kv_reuse_with_mixed_prefix_lengths_in_one_batch():
    """Rows with cached prefixes of different lengths (and none) share one left-padded
    forward pass and still score like separate full forwards."""
    reader = ModelReader(load_model(None), head="lm", labels=((27,), (29,)), batch_size=8, kv_tokens=4096)
    tokenizer = load_tokenizer(None)
    texts = [QUESTION + " " + " ".join(STEPS), QUESTION + " " + STEPS[0], "Unrelated text about " + OTHER[1]]
    ids = [tokenizer.encode(t) for t in texts]
    reader.read([Row(ids[0][:10], [9]), Row(ids[1][:6], [5])])
    rows = [Row(i, [len(i) - 3, len(i) - 1]) for i in ids]
    result = reader.read(rows)
    assert result.reused > 0 and result.batches == 1
    plain = read_scores(load_model(None), rows, head="lm", labels=((27,), (29,)), batch_size=1)[0]
    for a, b in zip(result.values, plain):
        assert a == pytest.approx(b, abs=1e-4)
