"""Metric functions on hand-made results, every number worked out by hand (see comments),
and the subset metrics checked against brute force with reason.answers.vote."""

import math
import random

import pytest

from reason.answers import vote
from reason.answers import group_answers
from reason.eval.metrics import (
    MAX_SUBSETS,
    budgets,
    compute_metrics,
    count_unverified,
    pass_at_k,
    problem_metrics,
    subsets,
)
from reason.eval.results import summarize_records


def cand(answer, group, correct, score):
    return {"answer": answer, "group": group, "correct": correct, "score": score}


# R1: two answers, each given twice; the right one ("5") has the single best score.
R1 = {
    "task_id": "t/1", "kind": "math", "answer": "5", "correct": True,
    "candidates": [cand("5", 0, True, 0.2), cand("7", 1, False, 0.9), cand("7", 1, False, 0.1), cand("5.0", 0, True, 0.95)],
    "usage": {"completion_tokens": 100, "prompt_tokens": 40}, "seconds": 4.0, "wall_seconds": 1.0,
}
# R2: the top-scored sample has no answer; the wrong answer "4" is the majority.
R2 = {
    "task_id": "t/2", "kind": "math", "answer": "4", "correct": False,
    "candidates": [cand(None, None, False, 0.99), cand("3", 0, True, 0.5), cand("4", 1, False, 0.4), cand("4", 1, False, 0.3)],
    "usage": {"completion_tokens": 300, "prompt_tokens": 60}, "seconds": 6.0, "wall_seconds": 3.0,
}


def test_budgets_double_up_to_n():
    assert budgets(1) == [1]
    assert budgets(2) == [1, 2]
    assert budgets(8) == [1, 2, 4, 8]
    assert budgets(6) == [1, 2, 4, 6]


def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(5, 2, 4) == 1.0  # only 3 wrong programs: 4 draws must hit a right one
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))


def test_problem_metrics_by_hand_r1():
    m1, m2, m4 = (problem_metrics(R1, k) for k in (1, 2, 4))
    # n=1: each candidate alone -> 2 of 4 right
    assert m1 == {"maj@1": 0.5, "weighted@1": 0.5, "naive@1": 0.5}
    # n=2, 6 pairs: maj ties go to the first of the pair: {01 r, 02 r, 03 r, 12 w, 13 w, 23 w}
    assert m2["maj@2"] == pytest.approx(3 / 6)
    # weighted: 01 .2<.9 w, 02 .2>.1 r, 03 r, 12 w, 13 .9<.95 r, 23 .1<.95 r
    assert m2["weighted@2"] == pytest.approx(4 / 6)
    # naive: 01 c1 w, 02 c0 r, 03 c3 r, 12 c1 w, 13 c3 r, 23 c3 r
    assert m2["naive@2"] == pytest.approx(4 / 6)
    # n=4: 2-2 tie goes to "5" (seen first); weights 1.15 vs 1.0; best score .95 is right
    assert m4 == {"maj@4": 1.0, "weighted@4": 1.0, "naive@4": 1.0}


def test_problem_metrics_by_hand_r2():
    m1, m2, m4 = (problem_metrics(R2, k) for k in (1, 2, 4))
    assert m1 == {"maj@1": 0.25, "weighted@1": 0.25, "naive@1": 0.25}  # no answer = wrong
    # maj: 01 r (only "3" votes), 02 w, 03 w, 12 tie->c1 r, 13 r, 23 w
    assert m2["maj@2"] == pytest.approx(3 / 6)
    assert m2["weighted@2"] == pytest.approx(3 / 6)  # 12: .5>.4 r, 13: .5>.3 r
    # naive picks the answerless .99 whenever c0 is in the pair: only 12 and 13 are right
    assert m2["naive@2"] == pytest.approx(2 / 6)
    assert m4 == {"maj@4": 0.0, "weighted@4": 0.0, "naive@4": 0.0}


def test_compute_metrics_averages_problems_and_scales_tokens():
    s = compute_metrics([R1, R2], 4)
    assert s["problems"] == 2 and s["n"] == 4 and s["budgets"] == [1, 2, 4]
    assert s["accuracy"] == 0.5
    assert s["maj@1"] == pytest.approx(0.375)
    assert s["maj@2"] == pytest.approx(0.5)
    assert s["maj@4"] == pytest.approx(0.5)
    assert s["weighted@2"] == pytest.approx((4 / 6 + 3 / 6) / 2)
    assert s["naive@2"] == pytest.approx((4 / 6 + 2 / 6) / 2)
    assert s["tokens_per_problem"] == 200
    assert [s["tokens@1"], s["tokens@2"], s["tokens@4"]] == [50, 100, 200]
    assert s["prompt_tokens_per_problem"] == 50
    assert s["seconds_per_problem"] == 2.0 and s["latency_per_problem"] == 5.0
    assert "pass@1" not in s
    assert compute_metrics([], 4)["problems"] == 0


def test_encoded_prompt_tokens_and_their_share_when_every_record_counts_them():
    with_counts = [{**r, "usage": {**r["usage"], "encoded_tokens": e}} for r, e in ((R1, 10), (R2, 40))]
    s = compute_metrics(with_counts, 4)
    assert s["encoded_tokens_per_problem"] == 25 and s["encoded_share"] == pytest.approx(50 / 100)
    assert "encoded_share" not in compute_metrics([with_counts[0], R2], 4)  # an older record lacks it


def test_a_run_with_one_candidate_per_problem_is_measured_at_one():
    """Greedy returns one candidate whatever --n says (the config default is 4): its
    summary is @1 at its full tokens, not @4 with a quarter of them at @1."""
    greedy = {**R1, "candidates": R1["candidates"][:1]}
    s = compute_metrics([greedy, {**R2, "candidates": R2["candidates"][1:2]}], 4)
    assert s["n"] == 1 and s["budgets"] == [1]
    assert s["tokens@1"] == s["tokens_per_problem"] == 200
    assert s["maj@1"] == 1.0 and "maj@2" not in s
    # one problem with all four candidates keeps the run at n=4
    assert compute_metrics([greedy, R2], 4)["n"] == 4


def test_code_problems_get_pass_at_k_and_naive_only():
    record = {
        "task_id": "HumanEval/0", "kind": "code", "answer": "x", "correct": True,
        "candidates": [cand("a", None, True, 0.1), cand("b", None, False, 0.9), cand("c", None, True, 0.5),
                       cand("d", None, False, 0.2), cand("e", None, False, 0.3)],
        "usage": {"completion_tokens": 50, "prompt_tokens": 10}, "seconds": 1.0,
    }
    s = compute_metrics([record], 4)
    assert s["pass@1"] == pytest.approx(0.4)
    assert s["pass@2"] == pytest.approx(0.7)
    assert s["pass@4"] == 1.0
    assert "maj@1" not in s and "weighted@1" not in s
    assert s["naive@1"] == pytest.approx(0.4)
    assert s["naive@4"] == pytest.approx(
        # 5 subsets of 4 (leave one out): best score is b (wrong) unless b is left out -> then c (right)
        1 / 5
    )


def test_subsets_are_exhaustive_when_few_and_a_fixed_sample_when_many():
    assert subsets(4, 2) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert subsets(3, 5) == [(0, 1, 2)]
    many = subsets(16, 8, "task-a")
    assert len(many) == MAX_SUBSETS and all(len(set(s)) == 8 for s in many)
    assert many == subsets(16, 8, "task-a")  # reproducible
    assert many != subsets(16, 8, "task-b")


def test_group_answers_uses_math_equivalence():
    assert group_answers(["1/2", "0.5", None, "3", "\\frac{1}{2}", "3.0"]) == [0, 0, None, 1, 0, 1]


@pytest.mark.parametrize("seed", range(12))
def test_subset_metrics_match_brute_force_voting(seed):
    """maj@n and weighted@n equal the mean over subsets of reason.answers.vote's pick."""
    rng = random.Random(seed)
    pool = ["1", "2", "3", None]
    answers = [rng.choice(pool) for _ in range(6)]
    scores = [round(rng.random(), 2) for _ in answers]
    groups = group_answers(answers)
    record = {
        "task_id": f"r{seed}", "kind": "math",
        "candidates": [cand(a, g, a == "2", s) for a, g, s in zip(answers, groups, scores)],
    }
    for n in (1, 2, 3, 4, 6):
        picks = subsets(len(answers), n)
        for rule, weights in (("maj", None), ("weighted", scores)):
            expected = 0.0
            for subset in picks:
                winner, _ = vote([answers[i] for i in subset], None if weights is None else [weights[i] for i in subset])
                expected += winner == "2"
            assert problem_metrics(record, n)[f"{rule}@{n}"] == pytest.approx(expected / len(picks)), (rule, n)
        naive = sum(
            answers[max(subset, key=lambda i: (scores[i], -i))] == "2" for subset in picks
        ) / len(picks)
        assert problem_metrics(record, n)[f"naive@{n}"] == pytest.approx(naive)


def code_record(task_id, verified, correct=(True, False)):
    record = {
        "task_id": task_id, "kind": "code", "answer": "x", "correct": correct[0],
        "candidates": [cand(str(i), None, c, 0.5) for i, c in enumerate(correct)],
        "usage": {"completion_tokens": 10, "prompt_tokens": 5}, "seconds": 1.0,
    }
    if verified is not None:
        record["verified"] = verified
    return record


def test_unverified_code_problems_are_counted_in_the_summary():
    records = [code_record("a", True), code_record("b", False), code_record("c", False)]
    assert count_unverified(records, "sandbox") == 2
    summary = summarize_records(records, {"n": 2, "verifier": "sandbox:5", "search": "best-of-n"}, "humaneval")
    assert summary["unverified"] == 2
    # a run where some problem was verified counts the others whatever the verifier's name
    assert count_unverified(records, "my-sandbox-plugin") == 2
    # a verifier without verdicts (confidence) on code: nothing was ever verified, no count
    assert count_unverified([code_record("b", False)], "confidence") is None
    # the sandbox verifier on problems without public tests only: all unverified
    assert count_unverified([code_record("b", False)], "sandbox") == 1
    # records written before verdicts were recorded, and math runs: no count
    assert count_unverified([code_record("a", None)], "sandbox") is None
    assert "unverified" not in summarize_records([R1, R2], {"n": 4, "verifier": "confidence"}, "x")


def test_summary_labels_say_which_number_is_a_choice_and_which_an_oracle():
    code = summarize_records([code_record("a", True)], {"n": 2, "verifier": "sandbox"}, "humaneval")
    assert set(code["labels"]) == {"accuracy", "naive", "pass"}
    assert "choice" in code["labels"]["accuracy"] and "oracle upper bound" in code["labels"]["pass"]
    math_run = summarize_records([R1, R2], {"n": 4}, "multiarith")
    assert set(math_run["labels"]) == {"accuracy", "maj", "weighted", "naive"}
