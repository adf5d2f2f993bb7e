"""DeepConf online on the scripted backend: the warm-up sets the threshold, a trace whose
sliding-window confidence drops below it is stopped (and never continued), the rest
vote weighted by confidence; tokens saved are reported."""

import pytest
from search_helpers import SURE, UNSURE, WordBackend, deepconf_c

from reason import Config, Runtime, Step
from reason.errors import UsageError
from reason.plugins.search.deepconf import (
    first_drop,
    group_confidences,
    percentile,
    token_confidences,
    trace_confidence,
)

HIGH, LOW = deepconf_c(SURE[1]), deepconf_c(UNSURE[1])  # 4.41, 1.7

WARM = [
    "Warm ok ok unsure ok ok ok ok The answer is \\boxed{5}.",  # lowest window: 1 unsure
    "Warm ok ok unsure unsure unsure ok ok ok The answer is \\boxed{7}.",  # lowest: 3 unsure
]
ALPHA = "Alpha ok ok ok ok ok unsure unsure unsure unsure unsure unsure ok ok ok The answer is \\boxed{9}."
BETA = "Beta ok ok ok ok ok ok ok ok ok The answer is \\boxed{5}."


def script(request, index):
    for full in (ALPHA, BETA):
        at = request.prompt.find(full.split()[0])
        if at >= 0:  # a continuation: write the rest of that trace
            done = request.prompt[at:]
            assert full.startswith(done)
            return full[len(done):]
    if request.params.max_tokens > 100 and request.watch is None:  # the warm-up: whole traces
        return WARM[index]
    return (ALPHA, BETA)[index]


def run(watches=False, **options):
    backend = WordBackend(script, watches=watches)
    opts = {"warmup": 2, "window": 4, "chunk": 4, "percentile": 10}
    opts.update(options)
    runtime = Runtime(Config(search="deepconf", n=4, verifier=None, max_tokens=200, options=opts), backend=backend)
    (solution,) = runtime.solve_many(["q"])
    return solution, backend


def test_window_helpers():
    assert group_confidences([1, 2, 3, 4, 5], 2) == [1.5, 2.5, 3.5, 4.5]
    assert group_confidences([1, 3], 4) == [2.0]  # shorter than a window: its mean
    assert trace_confidence([4, 4, 1, 1, 4], 2) == 1.0
    assert first_drop([4, 4, 1, 1, 4], 2, threshold=2.0) == 3
    assert first_drop([4, 4, 1, 1, 4], 2, threshold=2.0, start=4) is None
    assert first_drop([4, 1], 4, threshold=10) is None  # no full window yet
    assert percentile([1.0, 2.0], 10) == pytest.approx(1.1)
    assert percentile([3.0], 90) == 3.0
    step = Step(text="x y", token_ids=[1, 2], logprobs=[-0.1, -0.2], top_logprobs=[[-0.1, -2.1], [-0.2, -1.0]])
    assert token_confidences([step, Step(text="injected", injected=True)]) == pytest.approx([1.1, 0.6])


def test_a_trace_stops_when_its_window_drops_below_the_warmup_threshold():
    solution, backend = run()
    tree = solution.tree
    warm_conf = [(3 * HIGH + LOW) / 4, (HIGH + 3 * LOW) / 4]
    threshold = warm_conf[1] + 0.1 * (warm_conf[0] - warm_conf[1])
    assert solution.meta["threshold"] == pytest.approx(threshold)

    (alpha,) = [n for n in tree if n.meta.get("deepconf") == "stopped"]
    # tokens 0-5 are sure; the window ending at token 8 (ok + 3 unsure) is the first below
    assert alpha.meta["stopped_at_token"] == 8
    assert alpha.pruned and not alpha.children and not alpha.terminal
    assert alpha.num_tokens == 12  # three chunks of 4: stopped after the chunk with token 8
    assert alpha.text().startswith("Alpha") and "answer" not in alpha.text()

    (beta,) = [n for n in tree if n.meta.get("deepconf") == "online"]
    assert beta.text() == BETA and beta.terminal

    meta = solution.meta
    assert (meta["stopped"], meta["finished"], meta["online"]) == (1, 1, 2)
    warm_tokens = [len(t.split()) for t in WARM]
    assert meta["tokens"] == sum(warm_tokens) + 12 + len(BETA.split())
    assert meta["tokens_baseline"] == pytest.approx(sum(warm_tokens) / 2 * 4)
    assert meta["tokens_saved"] == pytest.approx(meta["tokens_baseline"] - meta["tokens"])
    # the stopped trace does not vote; the others vote weighted by confidence
    assert sorted(c.answer for c in solution.candidates) == ["5", "5", "7"]
    assert solution.answer == "5"
    assert solution.score == pytest.approx(HIGH)  # beta: every window fully confident
    # warm-up in one call, then one call per chunk round for both online traces
    assert [[r.n for r in call] for call in backend.calls][:3] == [[2], [2], [1, 1]]


def test_stopping_happens_at_chunk_granularity():
    solution, backend = run(chunk=8)
    (alpha,) = [n for n in solution.tree if n.meta.get("deepconf") == "stopped"]
    assert alpha.meta["stopped_at_token"] == 8
    assert alpha.num_tokens == 16  # the drop at token 8 is seen after the second chunk of 8
    assert solution.meta["finished"] == 1


@pytest.mark.parametrize("chunk", [4, 8])
def test_a_backend_that_watches_runs_each_online_trace_as_one_request_that_the_check_stops(chunk):
    chunked, _ = run(chunk=chunk)
    streamed, backend = run(watches=True, chunk=chunk)
    # warm-up, then the online traces in one request of n=2: no request per chunk
    assert [[r.n for r in call] for call in backend.calls] == [[2], [2]]
    (online,) = backend.calls[1]
    assert online.params.max_tokens == 200 and online.watch.every == chunk
    # the same traces stop at the same token, checked at the same chunk ends
    (alpha,) = [n for n in streamed.tree if n.meta.get("deepconf") == "stopped"]
    (alpha_chunked,) = [n for n in chunked.tree if n.meta.get("deepconf") == "stopped"]
    assert alpha.meta["stopped_at_token"] == alpha_chunked.meta["stopped_at_token"] == 8
    assert alpha.num_tokens == alpha_chunked.num_tokens == (12 if chunk == 4 else 16)
    assert alpha.pruned and alpha.step.finish_reason == "length"
    assert streamed.answer == chunked.answer == "5"
    assert streamed.meta["streamed"] and not chunked.meta["streamed"]
    assert {k: streamed.meta[k] for k in ("stopped", "finished", "tokens")} == {
        k: chunked.meta[k] for k in ("stopped", "finished", "tokens")}


def test_stream_false_goes_by_chunks_even_where_the_backend_watches():
    solution, backend = run(watches=True, stream=False)
    assert not solution.meta["streamed"]
    assert all(r.watch is None for call in backend.calls for r in call)
    assert len(backend.calls) > 2


def test_consensus_of_the_warmup_skips_the_online_traces():
    def agreeing(request, index):
        return WARM[0]

    runtime = Runtime(
        Config(search="deepconf", n=4, verifier=None, options={"warmup": 2, "consensus": 0.9}),
        backend=WordBackend(agreeing),
    )
    (solution,) = runtime.solve_many(["q"])
    assert solution.meta["online"] == 0 and solution.usage.model_calls == 1
    assert solution.meta["tokens_saved"] == pytest.approx(solution.meta["tokens_baseline"] / 2)


def test_bad_options_are_usage_errors():
    with pytest.raises(UsageError, match="warmup"):
        run(warmup=9)
    with pytest.raises(UsageError, match="logprobs"):
        Runtime(Config(search="deepconf", logprobs=0), backend=WordBackend(script)).solve("q")
