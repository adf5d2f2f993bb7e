"""The self-eval verifier: a causal LM answers "is this step correct?", score = P(Yes)
normalised over Yes/No. Real-model tests use the embedded SmolLM2 (the default judge is
the policy model); the numbers mean nothing, the reads and the bookkeeping are checked."""

import pytest
from scripted import ScriptedBackend

from reason import Config, Runtime, ScoreRequest, Step, Task
from reason.errors import UsageError
from reason.plugins.backends.models import load_model
from reason.plugins.verifiers.self_eval import NO, STEP_PROMPT, YES, SelfEvalVerifier, answer_ids, fill

QUESTION = "What is 2 + 3?"
STEPS = ["2 + 3 = 5.\n\n", "The answer is \\boxed{5}."]


def request(steps, question=QUESTION):
    return ScoreRequest(task=Task(question=question), prompt="(policy prompt)", steps=[Step(text=s) for s in steps])


def test_fill_places_question_previous_and_latest_step():
    text = fill(STEP_PROMPT, QUESTION, ["a", "b", "c"])
    assert "Problem:\nWhat is 2 + 3?" in text
    assert "Previous steps:\na\nb\n\nLatest step:\nc\n" in text
    assert "(none)" in fill(STEP_PROMPT, QUESTION, ["a"])
    # plain replacement: LaTeX braces in a custom prompt need no escaping
    assert fill("\\boxed{} {solution}", "q", ["x", "y"]) == "\\boxed{} x\ny"


def test_bad_options_are_usage_errors():
    with pytest.raises(UsageError, match="self_eval_scope"):
        SelfEvalVerifier(Config(options={"self_eval_scope": "paragraph"}))
    with pytest.raises(UsageError, match="self-eval.prompt"):
        SelfEvalVerifier(Config(options={"self_eval_prompt": "Is it right?"}))
    with pytest.raises(UsageError, match="does not exist"):
        SelfEvalVerifier(Config(options={"self_eval_model": "./no/such/model"}))


def test_default_judge_is_the_policy_model(tmp_path):
    assert SelfEvalVerifier(Config()).source.name == "SmolLM2-135M-Instruct"
    with pytest.raises(UsageError, match="does not exist"):
        SelfEvalVerifier(Config(model=str(tmp_path / "missing")))


@pytest.mark.model
def test_score_is_p_yes_over_yes_and_no_of_a_full_forward():
    import torch

    judge = SelfEvalVerifier(Config())
    scores = judge.score([request(STEPS)])[0].step_scores
    tokenizer, model = judge._tokenizer, load_model(None)
    yes, no = answer_ids(tokenizer, YES), answer_ids(tokenizer, NO)
    assert yes and no and not set(yes) & set(no)
    expected = []
    for k in range(1, len(STEPS) + 1):
        ids = judge.judge_input(QUESTION, [s.strip() for s in STEPS[:k]])
        assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
        with torch.inference_mode():
            probs = torch.softmax(model(input_ids=torch.tensor([ids], device=model.device)).logits[0, -1].float(), dim=-1)
        p_yes, p_no = probs[list(yes)].sum().item(), probs[list(no)].sum().item()
        expected.append(p_yes / (p_yes + p_no))
    assert scores == pytest.approx(expected, abs=1e-5)


@pytest.mark.model
def test_batch_equals_one_by_one_and_grown_paths_reuse_verdicts():
    paths = [STEPS, ["2 + 3 = 6.\n\n"], ["I add the numbers.\n\n"]]
    judge = SelfEvalVerifier(Config(options={"self_eval_batch_size": 4}))
    together = judge.score([request(p) for p in paths])
    assert judge.last_call["computed"] == 4 and judge.last_call["batches"] == 1
    for path, score in zip(paths, together):
        alone = SelfEvalVerifier(Config()).score([request(path)])[0]
        assert score.step_scores == pytest.approx(alone.step_scores, abs=1e-5)
        assert all(0.0 <= s <= 1.0 for s in score.step_scores)
    grown = judge.score([request(paths[1] + ["So the answer is \\boxed{6}."])])[0]
    assert judge.last_call["computed"] == 1 and judge.last_call["cached"] == 1
    assert grown.step_scores[0] == together[1].step_scores[0]
    assert judge.stats.hit_rate == pytest.approx(1 / 6)


@pytest.mark.model
def test_solution_scope_judges_only_the_whole_path():
    judge = SelfEvalVerifier(Config(options={"self_eval_scope": "solution"}))
    score = judge.score([request(STEPS)])[0]
    assert judge.last_call["computed"] == 1
    assert score.step_scores[0] == 1.0 and 0.0 <= score.step_scores[1] <= 1.0
    # the verdict is on the whole solution: the judge saw both steps
    ids = judge.judge_input(QUESTION, [s.strip() for s in STEPS])
    text = judge._tokenizer.decode(ids)
    assert "Solution:\n2 + 3 = 5.\nThe answer is \\boxed{5}." in text


@pytest.mark.model
def test_runtime_best_of_n_with_self_eval():
    backend = ScriptedBackend(lambda req, i: ["2 + 3 = 5.\n\nThe answer is \\boxed{5}.", "The answer is \\boxed{6}."][i % 2])
    config = Config(search="best-of-n", verifier="self-eval", n=2, aggregation="min")
    with Runtime(config, backend=backend) as runtime:
        solution = runtime.solve(QUESTION)
    assert [len(c.step_scores) for c in solution.candidates] == [2, 1]
    assert all(c.score == min(c.step_scores) for c in solution.candidates)
    assert solution.usage.verifier_calls == 1


@pytest.mark.model
@pytest.mark.timeout(900)
def test_beam_search_with_self_eval_from_the_cli():
    import json
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", "from reason.cli import main; main()", "solve", "--search", "beam",
         "--verifier", "self-eval", "--n", "2", "--beam-width", "2", "--max-steps", "2", "--max-tokens", "32",
         "--step-tokens", "16", "--seed", "0", "--json", "-q", QUESTION],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])
    assert out["config"]["verifier"] == "self-eval" and out["candidates"]
    for candidate in out["candidates"]:
        assert candidate["step_scores"] and all(0.0 <= s <= 1.0 for s in candidate["step_scores"])
        assert candidate["score"] == pytest.approx(candidate["step_scores"][-1])
