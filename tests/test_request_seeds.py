"""Seeds per request: with a run seed, every request a search makes gets a seed of its own
(derived from where it starts in the tree), so requests from the same node draw different
samples, and the same seed still gives the same search whatever order requests finish in.

The scripted "model" here writes what its seed decides, as a real seeded sampler does:
two requests with the same seed write the same text."""

import hashlib

import pytest
from scripted import ContinuousScriptedBackend, ScriptedBackend
from search_helpers import register_tag_verifier, step_script, tag_for, unregister_tag_verifier

from reason import Config, Runtime, SearchContext, SearchOutcome, SearchPolicy
from reason.registry import get_registry
from reason.types import sample_seed


@pytest.fixture(autouse=True)
def tag_verifier():
    register_tag_verifier()
    yield
    unregister_tag_verifier()


def seeded_script(finish_depth: int = 3):
    """Each sample's step is decided by its seed (as the backends derive it per sample);
    an unseeded sample writes ``unseeded``."""

    def one(request, index, depth):
        seed = request.params.seed
        draw = "unseeded" if seed is None else f"draw {sample_seed(seed, index) % 10**9}"
        if depth >= finish_depth - 1:
            return f"Step {depth} {draw} The answer is \\boxed{{{depth}}} <{tag_for(draw)}>"
        return f"Step {depth} {draw} <{tag_for(draw)}>\n\n"

    return step_script(one, finish_depth)


def solve(search="dvts", backend=None, seed=0, **config):
    backend = backend or ScriptedBackend(seeded_script())
    settings = dict(search=search, verifier="test-tags", n=8, beam_width=2, seed=seed)
    settings.update(config)
    (solution,) = Runtime(Config().replace(**settings), backend=backend).solve_many(["q"])
    return solution, backend


def first_steps_by_subtree(solution):
    steps: dict[int, set[str]] = {}
    for node in solution.tree.root.children:
        steps.setdefault(node.meta["subtree"], set()).add(node.step.text)
    return steps


def test_dvts_subtrees_started_at_the_root_draw_different_samples():
    solution, backend = solve()
    first_call = backend.calls[0]
    seeds = [request.params.seed for request in first_call]
    assert len(first_call) == 4 and len(set(seeds)) == 4  # one seed per subtree
    steps = first_steps_by_subtree(solution)
    # with one seed for every request, the four subtrees were copies of one subtree
    assert len({frozenset(texts) for texts in steps.values()}) == 4
    assert len({c.text for c in solution.candidates}) == 8


def test_the_roots_first_request_keeps_the_run_seed():
    """So best-of-N and self-consistency draw the samples one seeded request draws."""
    _, backend = solve(search="best-of-n", seed=7)
    assert [r.params.seed for call in backend.calls for r in call] == [7]
    _, backend = solve(search="dvts", seed=7)
    assert backend.calls[0][0].params.seed == 7
    assert all(r.params.seed != 7 for call in backend.calls[1:] for r in call)


def test_without_a_seed_requests_stay_unseeded():
    solution, backend = solve(seed=None)
    assert {r.params.seed for call in backend.calls for r in call} == {None}
    assert all("unseeded" in c.text for c in solution.candidates)


class TwiceFromTheRoot(SearchPolicy):
    """Completes the root twice, one request after the other: a rollout repeated."""


    async def run(self, ctx: SearchContext) -> SearchOutcome:
        first = await ctx.complete(ctx.root, 1)
        second = await ctx.complete(ctx.root, 1)
        candidates = [ctx.candidate(node) for node in first + second]
        return SearchOutcome(candidates=candidates, chosen=candidates[0])


def test_a_repeated_request_from_one_node_draws_new_samples():
    get_registry().add("search", "twice-from-the-root", TwiceFromTheRoot, plugin="tests")
    try:
        solution, backend = solve(search="twice-from-the-root")
    finally:
        get_registry().remove("search", "twice-from-the-root")
    first, second = solution.candidates
    assert first.text != second.text
    assert [len(call) for call in backend.calls] == [1, 1]


def shuffled_delays(request):
    """Finish requests in an order unrelated to the order they were made."""
    return int(hashlib.sha256(request.prompt.encode()).hexdigest()[:4], 16) % 7 * 0.003


@pytest.mark.parametrize("search", ["dvts", "beam"])  # the searches with requests in flight side by side
def test_a_seeded_search_is_the_same_whatever_order_requests_finish_in(search):
    lockstep, _ = solve(search=search)
    continuous, backend = solve(search=search, backend=ContinuousScriptedBackend(seeded_script(), delay=shuffled_delays))
    assert backend.most_in_flight > 1  # requests did overlap
    assert [c.text for c in continuous.candidates] == [c.text for c in lockstep.candidates]
    assert continuous.answer == lockstep.answer
    assert sorted(n.key for n in continuous.tree) == sorted(n.key for n in lockstep.tree)


def test_keys_name_the_request_and_sample_that_made_a_node():
    solution, _ = solve()
    root = solution.tree.root
    assert root.key == "" and root.draws == 4
    assert sorted(child.key for child in root.children) == [f"/{d}.{i}" for d in range(4) for i in range(2)]
    for node in solution.tree:
        if node.parent is not None:
            assert node.key.startswith(node.parent.key + "/")
    assert len({node.key for node in solution.tree}) == len(solution.tree)

