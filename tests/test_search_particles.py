"""Particle filtering on the scripted backend and a verifier that reads scores from the
text: weights are logit(score) with the clip, resampling draws in proportion (systematic
counts are exact), copies of a particle share one request, finished particles keep their
weight, tempering starts below an effective size of N/2, particle Gibbs keeps its
reference, and the final choice follows ``final``."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from scripted import ScriptedBackend
from search_helpers import register_tag_verifier, step_script, tagged_steps_script, unregister_tag_verifier

from reason import Config, Runtime
from reason.plugins.search.particle_filtering import (
    CLIP,
    effective_size,
    log_weight,
    normalize,
    resample,
    tempered,
)


@pytest.fixture(autouse=True)
def tag_verifier():
    register_tag_verifier()
    yield
    unregister_tag_verifier()


def run(script=None, tasks=("q",), **config):
    backend = ScriptedBackend(script or tagged_steps_script(finish_depth=4))
    settings = dict(search="particle-filtering", verifier="test-tags", n=6, seed=0)
    settings.update(config)
    runtime = Runtime(Config().replace(**settings), backend=backend)
    return runtime.solve_many(list(tasks)), backend


def test_log_weight_is_the_logit_of_the_clipped_score():
    assert log_weight(0.5) == 0.0
    assert log_weight(0.9) == pytest.approx(math.log(9))
    assert log_weight(0.0) == pytest.approx(math.log(CLIP / (1 - CLIP)))
    assert log_weight(1.0) == pytest.approx(-log_weight(0.0))
    # so the weights are proportional to p / (1 - p)
    scores = [0.2, 0.5, 0.8]
    weights = normalize([log_weight(s) for s in scores])
    odds = [s / (1 - s) for s in scores]
    assert weights == pytest.approx([o / sum(odds) for o in odds])


def test_systematic_resampling_gives_exact_counts():
    weights = [0.5, 0.25, 0.125, 0.125]
    for seed in range(20):
        counts = Counter(resample(weights, 8, random.Random(seed), "systematic"))
        assert [counts[i] for i in range(4)] == [4, 2, 1, 1]
    weights = [0.3, 0.3, 0.4]  # N w = 2.1, 2.1, 2.8: every count is the floor or the ceiling
    for seed in range(50):
        counts = Counter(resample(weights, 7, random.Random(seed), "systematic"))
        assert sum(counts.values()) == 7
        for i, w in enumerate(weights):
            assert math.floor(7 * w) <= counts[i] <= math.ceil(7 * w)


def test_multinomial_resampling_draws_in_proportion():
    weights = [0.6, 0.3, 0.1]
    counts = Counter(resample(weights, 30_000, random.Random(1), "multinomial"))
    for i, w in enumerate(weights):
        assert counts[i] / 30_000 == pytest.approx(w, abs=0.01)


def test_tempering_restores_an_effective_size_of_half_the_particles():
    log_weights = [8.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert effective_size(normalize(log_weights)) < 4
    weights, beta = tempered(log_weights, 4)
    assert 0 < beta < 1
    assert effective_size(weights) == pytest.approx(4, abs=1e-3)
    assert weights[0] > weights[1]  # tempered, not flattened
    even = [0.1, 0.0, -0.1, 0.0]
    assert tempered(even, 2) == (normalize(even), 1.0)


def test_copies_of_a_particle_are_one_request_and_every_live_particle_advances():
    (solution,), backend = run()
    # first call: all 6 particles sit at the root, one request with n=6
    assert [[r.n for r in call] for call in backend.calls][0] == [6]
    for call in backend.calls:
        assert sum(r.n for r in call) == 6  # nobody finishes before depth 4: all advance
        prompts = [r.prompt for r in call]
        assert len(prompts) == len(set(prompts))  # one request per distinct node
    ancestors = solution.meta["iterations"][0]["ancestors"]
    assert len(ancestors) == 3 and all(len(a) == 6 for a in ancestors)
    # the tree records the draws: copies made of each node, its share of the weight
    drawn = [node for node in solution.tree if "particles" in node.meta]
    assert sum(node.meta["particles"][0] for node in drawn if node.depth == 1) == 6
    assert all(0 <= node.meta["weight"] <= 1 for node in drawn)


def early_finisher(request, index, depth):
    """Sample 0 of the first request answers at once with score 0.9; every other step is a
    plain 0.2 step, and the fourth step answers with score 0.3."""
    if depth == 0 and index == 0:
        return "Step 0 The answer is \\boxed{7} <0.9>"
    if depth >= 3:
        return f"Step {depth} The answer is \\boxed{{{3 + index}}} <0.3>"
    return f"Step {depth} idx{index} <0.2>\n\n"


def test_a_finished_particle_keeps_its_weight_and_stays_in_the_draw():
    (solution,), backend = run(step_script(early_finisher, 4), n=4, options={"resampling": "systematic"})
    early = next(c for c in solution.candidates if c.answer == "7")
    node = solution.tree[early.node_id]
    assert node.depth == 1 and early.score == pytest.approx(0.9)
    # it was drawn again at every step (odds 9 against 0.25), and never advanced
    assert len(node.meta["particles"]) == len(solution.meta["iterations"][0]["ancestors"])
    assert all(copies >= 1 for copies in node.meta["particles"])
    assert not node.children
    # the early answer weighs most (logit .9 against logit .3 for each of the others)
    assert solution.answer == "7"


def test_final_vote_follows_the_option():
    def script(request, index, depth):
        if depth < 1:
            return f"Step {depth} idx{index} <0.5>\n\n"
        # one strong particle answers 1, the rest answer 2 with middling scores
        if "idx0" in request.prompt:
            return "Step 1 The answer is \\boxed{1} <0.95>"
        return "Step 1 The answer is \\boxed{2} <0.4>"

    answers = {}
    for final in ("top", "vote", "weighted-vote"):
        (solution,), _ = run(step_script(script, 2), n=6, options={"final": final, "resampling": "systematic"})
        answers[final] = solution.answer
        assert solution.meta["final"] == final
    assert answers == {"top": "1", "vote": "2", "weighted-vote": "1"}  # odds 19 against 5 x 2/3


def test_tempering_kicks_in_only_in_the_first_half_and_only_below_half_the_particles():
    def script(request, index, depth):
        if depth >= 7:
            return f"Step {depth} The answer is \\boxed{{{index}}} <0.5>"
        # one particle per step (the first sample along the all-first path) is far more
        # likely than the rest: the weights collapse onto it
        strong = index == 0 and "idx" not in request.prompt.replace("idx0", "")
        return f"Step {depth} idx{index} <{0.999 if strong else 0.01}>\n\n"

    options = {"resampling": "systematic"}  # exact counts: the strong particle is always drawn
    (plain,), _ = run(step_script(script, 8), n=8, max_steps=8, options=options)
    (hot,), _ = run(step_script(script, 8), n=8, max_steps=8, options={**options, "temper": True})
    assert set(plain.meta["iterations"][0]["betas"]) == {1.0}
    betas = hot.meta["iterations"][0]["betas"]
    sizes = hot.meta["iterations"][0]["effective_sizes"]
    assert all(b < 1 for b in betas[:4]) and all(b == 1.0 for b in betas[4:])
    assert all(s == pytest.approx(4, abs=0.01) for s in sizes[:4])


def test_particle_gibbs_keeps_the_reference_path_in_slot_zero():
    (solution,), backend = run(n=4, options={"iterations": 2})
    first, second = solution.meta["iterations"]
    assert all(a[0] == 0 for a in second["ancestors"])  # the reference is always kept
    # the second run's requests hold one particle fewer (the reference is not resampled)
    first_calls = len(first["ancestors"]) + 1
    assert all(sum(r.n for r in call) == 3 for call in backend.calls[first_calls:])


def test_seeded_runs_repeat_and_tasks_share_backend_calls():
    (a,), _ = run()
    (b,), _ = run()
    assert a.meta["iterations"][0]["ancestors"] == b.meta["iterations"][0]["ancestors"]
    solutions, backend = run(tasks=("x", "y"))
    assert all(len(call) >= 2 for call in backend.calls)  # both problems' particles in every call
    assert all(s.answer is not None for s in solutions)
