"""Components resolve per effective config: a solve's overrides reach the components it
runs, and a policy runs a sub-policy through the runtime (``ctx.run_policy``)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from scripted import ScriptedBackend

import reason
import reason.context
from reason import Config, Option, Runtime, SearchOutcome, UsageError
from reason.registry import get_registry, load_plugins


class Constant(reason.Verifier):
    """Scores every step ``constant``; counts how many were built."""

    class Options(reason.Options):
        constant = Option(float, 0.5, minimum=0, maximum=1, help="the score")

    built = 0
    threads: list[str] = []

    def __init__(self, config, arg=None, **kwargs):
        super().__init__(config, arg, **kwargs)
        Constant.built += 1
        Constant.threads.append(threading.current_thread().name)
        self.value = self.options.constant

    def score(self, requests):
        return [reason.Score(step_scores=[self.value] * len(r.steps)) for r in requests]


@pytest.fixture
def registry():
    registry = load_plugins()
    registry.add("verifier", "constant", Constant)
    Constant.built, Constant.threads = 0, []
    return registry


def test_two_solves_with_different_options_use_different_options(registry):
    config = Config(search="best-of-n", n=2, verifier="constant")
    with Runtime(config, registry=registry, backend=ScriptedBackend()) as rt:
        assert rt.solve("q").score == 0.5
        assert rt.solve("q", options={"constant": 0.2}).score == 0.2
        assert rt.solve("q", options={"constant": 0.9}).score == 0.9
        assert rt.solve("q", options={"constant.constant": 0.9}).score == 0.9  # the same options: the same verifier
        assert rt.solve("q").score == 0.5  # the first verifier is kept, not rebuilt
        assert rt.solve("q", n=3, temperature=0.1, seed=4).score == 0.5  # nor for a solve's own settings
        assert Constant.built == 3


def test_a_splitter_follows_the_config_fields_it_reads():
    with Runtime(Config(splitter="step"), backend=ScriptedBackend()) as rt:
        wide, narrow = rt.config, rt.config.replace(step_tokens=7)
        assert rt.splitter(narrow) is not rt.splitter(wide)
        assert rt.splitter(narrow).step_params(narrow.sampling()).max_tokens == 7
        assert rt.splitter(wide.replace(n=9)) is rt.splitter(wide)


def test_a_component_without_options_is_kept_across_solves_and_rebuilt_for_other_settings(registry):
    """What a solve may change (seed, n, temperature ...) reaches a kept verifier with each
    request; the other Config fields may change what it is, so they get another one."""

    class Plain(reason.Verifier):
        def score(self, requests):
            return [reason.Score(step_scores=[0.5] * len(r.steps)) for r in requests]

    registry.add("verifier", "plain", Plain)
    with Runtime(Config(verifier="plain"), registry=registry, backend=ScriptedBackend()) as rt:
        assert rt.verifier(rt.config) is rt.verifier(rt.config.replace(n=9, seed=3, temperature=0.1, max_tokens=7))
        assert rt.verifier(rt.config.replace(step_tokens=9)) is not rt.verifier(rt.config)


def test_a_long_lived_runtime_keeps_a_bounded_number_of_variants(registry):
    """A server whose requests each set verifier options must not keep one verifier per
    request: the least recently used variant is let go, the ones in use stay."""
    from reason.component_cache import VARIANTS_KEPT

    def variant(s):
        return rt.config.replace(options={"constant": s / 1000})

    with Runtime(Config(verifier="constant"), registry=registry, backend=ScriptedBackend()) as rt:
        first = rt.verifier(rt.config)
        variants = [rt.verifier(variant(s)) for s in range(1, VARIANTS_KEPT)]
        assert rt.verifier(rt.config) is first  # 16 kept: the first is still there, now recent
        rt.verifier(variant(1000))  # the 17th lets the least recent (1) go
        assert rt.verifier(rt.config) is first
        assert rt.verifier(variant(2)) is variants[1]
        assert rt.verifier(variant(1)) is not variants[0]
        kept = [k for k in rt._cache._built if k[:2] == ("verifier", "constant")]
        assert len(kept) == VARIANTS_KEPT


def test_a_verifier_let_go_by_the_cache_takes_its_worker_thread_with_it(registry):
    """Scored once (so it has a queue and a worker thread), then evicted by 16 newer
    variants: once no search holds it, the verifier is collected and its thread ends."""
    import gc
    import weakref

    from reason.component_cache import VARIANTS_KEPT

    def threads():
        return {t.name for t in threading.enumerate() if t.name.startswith("reason-verifier-constant")}

    with Runtime(Config(search="best-of-n", n=2, verifier="constant", seed=0), registry=registry, backend=ScriptedBackend()) as rt:
        rt.solve("q")
        first = weakref.ref(rt.verifier(rt.config))
        assert threads(), "scoring started the verifier's worker thread"
        for s in range(1, VARIANTS_KEPT + 1):  # newer variants push the first one out
            rt.verifier(rt.config.replace(options={"constant": s / 1000}))
        gc.collect()
        assert first() is None
        deadline = time.time() + 10
        while threads() and time.time() < deadline:
            time.sleep(0.05)
        assert not threads()
        assert rt.solve("q", seed=0).answer == "4"  # built again when asked for again


def test_a_runtimes_backend_settings_are_fixed():
    rt = Runtime(Config())  # the backend is built on first use: nothing loads here
    with pytest.raises(UsageError, match="backend is fixed when it is built; this run changes -o transformers.max_batch"):
        rt.validate(rt.config.replace(options={"max_batch": 2}))
    with pytest.raises(UsageError, match="this run changes model"):
        rt.validate(rt.config.replace(model="/elsewhere"))
    rt.validate(rt.config.replace(n=9, options={"lookahead": 1}, search="beam"))
    rt.close()


class Spy(reason.SearchPolicy):
    """Records the context it ran in, then answers greedily."""

    seen: list = []

    async def run(self, ctx):
        Spy.seen.append(ctx)
        (leaf,) = await ctx.complete(ctx.root, 1, temperature=0.0)
        candidate = ctx.candidate(leaf, (await ctx.score([leaf]))[0])
        return SearchOutcome(candidates=[candidate], chosen=candidate)


def test_compute_optimal_runs_its_strategy_through_the_runtime(registry):
    registry.add("search", "spy", Spy)  # in this runtime's registry only
    assert "spy" not in get_registry().components["search"]
    Spy.seen = []
    table = [{"max_difficulty": 1.0, "search": "spy", "n": 3, "verifier": "constant"}]
    config = Config(search="compute-optimal", n=2, verifier="confidence", options={"table": table, "probe": 2, "constant": 0.75})
    with Runtime(config, registry=registry, backend=ScriptedBackend()) as rt:
        solution = rt.solve("q")
    # the row's verifier was built once, up front in the caller's thread, not on the event loop
    assert Constant.threads == [threading.current_thread().name]
    (ctx,) = Spy.seen
    assert ctx.config.search == "spy" and ctx.config.n == 3 and ctx.config.verifier == "constant"
    assert isinstance(ctx.verifier, Constant) and solution.score == 0.75
    assert ctx.tree is solution.tree  # the same tree: probe samples and the strategy's path
    assert solution.config["search"] == "compute-optimal" and solution.meta["strategy"] == "spy"
    assert solution.usage.sequences == 3  # 2 probe samples + the spy's 1, counted once in the solve
    assert solution.usage.verifier_calls == 2  # the probe's scoring and the spy's


def test_a_sub_policy_that_does_not_exist_fails_before_the_run():
    config = Config(search="compute-optimal", options={"table": [{"max_difficulty": 1.0, "search": "nope"}]})
    with pytest.raises(reason.ComponentNotFound, match="unknown search 'nope'"):
        Runtime(config, backend=ScriptedBackend())


def test_a_table_row_cannot_change_the_model():
    config = Config(search="compute-optimal", options={"table": [{"max_difficulty": 1.0, "search": "beam", "model": "x"}]})
    with pytest.raises(UsageError, match="unknown key"):
        Runtime(config, backend=ScriptedBackend())


def test_run_policy_needs_a_runtime():
    ctx = reason.context.RunningSearch(
        task=reason.Task("q"), config=Config(), prompt="", engines=None, splitter=None, verifier=None, emit=print
    )
    with pytest.raises(RuntimeError, match="built without a runtime"):
        asyncio.run(ctx.run_policy(Config()))
