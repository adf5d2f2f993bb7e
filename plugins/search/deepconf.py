"""DeepConf online (Fu et al., 2025, "Deep Think with Confidence"): stop low-confidence
reasoning traces early, then vote weighted by confidence.

- *Token confidence* ``C_i = -mean_j log P_i(j)`` over the top-k alternatives at token
  ``i`` (k = ``config.logprobs``): high when the model's distribution is peaked.
- *Group confidence*: the mean ``C_i`` over a sliding window of ``window`` tokens; a
  trace's confidence is its lowest group confidence (the whole-trace mean for traces
  shorter than a window).
- *Warm-up*: ``warmup`` traces are sampled in full; the ``percentile``-th percentile of
  their confidences is the threshold (10 = DeepConf-high, keeps ~90% of traces;
  90 = DeepConf-low, keeps ~10%).
- *Online*: the other N - warmup traces are generated in chunks of ``chunk`` tokens;
  after each chunk every full window ending in it is checked, and a trace whose group
  confidence dropped below the threshold is stopped (pruned, never continued).
- *Vote*: warm-up traces and traces that finished vote on the answer, each weighted by
  its confidence (``consensus``: optionally skip the online phase when the warm-up
  traces already agree at least that much).

A trace is checked every ``chunk`` tokens. Where the backend can watch a sample while
it generates (:attr:`reason.Backend.watches`: vllm, transformers), each online trace is
one request that the check stops; elsewhere (servers), or with ``-o stream=false``, it is
a new request per chunk that re-sends the trace so far. The two draw different samples
(a chunk's seed is its own), alike in distribution.
``meta`` reports the threshold, how many traces stopped, the tokens generated, and the
tokens saved against N full traces of the warm-up's mean length.
"""

from __future__ import annotations

from collections.abc import Sequence

import reason
from reason import Completion, Node, SamplingParams, SearchContext, SearchOutcome, SearchPolicy, Step, Watch
from reason.answers import choose, vote
from reason.errors import UsageError
from reason.options import Option


def token_confidences(steps: Sequence[Step]) -> list[float]:
    """``C_i`` for every generated token along a path (injected text has none)."""
    out = []
    for step in steps:
        tops = step.top_logprobs or [()] * len(step.logprobs)
        for logprob, top in zip(step.logprobs, tops):
            out.append(-sum(top) / len(top) if top else -logprob)
    return out


def group_confidences(confidences: Sequence[float], window: int) -> list[float]:
    """Mean confidence of every full window (one value per window end); a sequence
    shorter than the window gives its own mean."""
    if not confidences:
        return []
    if len(confidences) < window:
        return [sum(confidences) / len(confidences)]
    total = sum(confidences[:window])
    groups = [total / window]
    for i in range(window, len(confidences)):
        total += confidences[i] - confidences[i - window]
        groups.append(total / window)
    return groups


def trace_confidence(confidences: Sequence[float], window: int) -> float:
    """A trace's confidence: its lowest group confidence."""
    groups = group_confidences(confidences, window)
    return min(groups) if groups else 0.0


def first_drop(confidences: Sequence[float], window: int, threshold: float, start: int = 0) -> int | None:
    """Index of the first token at or after ``start`` where the full window ending there
    has group confidence below ``threshold``; ``None`` when there is none."""
    total = 0.0
    for i, value in enumerate(confidences):
        total += value
        if i >= window:
            total -= confidences[i - window]
        if i >= window - 1 and i >= start and total / window < threshold:
            return i
    return None


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class DeepConf(SearchPolicy):
    class Options(reason.Options):
        warmup = Option(int, None, minimum=1, help="traces sampled in full to set the threshold [max(2, N/4), at most N]")
        percentile = Option(float, 10, minimum=0, maximum=100, help="the stop threshold's percentile of warm-up confidences")
        window = Option(int, 32, minimum=1, help="tokens in a sliding confidence window")
        chunk = Option(int, None, minimum=1, help="tokens generated between checks [window]")
        consensus = Option(
            float, None, minimum=0, maximum=1, help="skip the online phase when the warm-up vote share reaches this"
        )
        stream = Option(
            bool,
            True,
            help="each online trace one request that the check stops, where the backend can watch; false: a request per chunk",
        )

    options: Options

    def __init__(self, config, arg=None, **kwargs):
        super().__init__(config, arg, **kwargs)
        n = config.n
        warmup = self.options.warmup
        self.warmup = min(n, max(2, n // 4)) if warmup is None else warmup
        self.percentile = self.options.percentile
        self.window = self.options.window
        self.chunk = self.options.chunk or self.window
        self.consensus = self.options.consensus
        self.stream = self.options.stream
        if config.logprobs < 1:
            raise UsageError("deepconf needs token logprobs: set --logprobs to 1 or more (default 5)")
        if not 1 <= self.warmup <= n:
            raise UsageError(f"deepconf: -o deepconf.warmup must be between 1 and --n ({n}), got {self.warmup}")

    @property
    def width(self) -> int:
        """The warm-up traces run, then the online ones: never all N at once."""
        return max(self.warmup, int(self.config.n) - self.warmup)

    async def run(self, ctx: SearchContext) -> SearchOutcome:
        n = ctx.config.n
        warm = await ctx.complete(ctx.root, self.warmup)
        warm_conf = [trace_confidence(token_confidences(leaf.steps()), self.window) for leaf in warm]
        threshold = percentile(warm_conf, self.percentile)
        for leaf, conf in zip(warm, warm_conf):
            leaf.meta.update(deepconf="warmup", confidence=conf)

        online = n - self.warmup
        if online and self.consensus is not None:
            _, weight = vote([ctx.answer(leaf) for leaf in warm], warm_conf)
            if sum(warm_conf) and weight / sum(warm_conf) >= self.consensus:
                online = 0
        finished: list[Node] = []
        stopped: list[Node] = []
        if online:
            watch = self._watch(ctx, [], threshold)
            params = self._chunk_params(ctx, ctx.root, watch)
            assert params is not None  # the root has spent no budget
            firsts = await ctx.generate(ctx.root, online, params, watch)
            traces = await ctx.gather(*(self._trace(ctx, node, threshold) for node in firsts))
            for node, was_stopped in traces:
                (stopped if was_stopped else finished).append(node)

        voters = list(zip(warm, warm_conf))
        for leaf in finished:
            conf = trace_confidence(token_confidences(leaf.steps()), self.window)
            leaf.meta.update(deepconf="online", confidence=conf)
            voters.append((leaf, conf))
        candidates = [ctx.candidate(leaf, conf) for leaf, conf in voters]
        index, weight = choose([c.answer for c in candidates], [c.score for c in candidates], "weighted")
        chosen = candidates[index] if index is not None else None

        warm_tokens = [leaf.num_tokens for leaf in warm]
        generated = sum(warm_tokens) + sum(node.num_tokens for node in finished + stopped)
        baseline = sum(warm_tokens) / len(warm_tokens) * n if warm_tokens else 0.0
        meta = {
            "threshold": threshold,
            "warmup": self.warmup,
            "online": online,
            "stopped": len(stopped),
            "finished": len(finished),
            "answer_weight": weight,
            "tokens": generated,
            "tokens_baseline": round(baseline, 1),
            "tokens_saved": round(baseline - generated, 1),
            "saved_fraction": round((baseline - generated) / baseline, 4) if baseline else 0.0,
            "streamed": bool(online) and self._streams(ctx),
        }
        return SearchOutcome(candidates=candidates, chosen=chosen, meta=meta)

    def _streams(self, ctx: SearchContext) -> bool:
        return self.stream and ctx.watches

    def _watch(self, ctx: SearchContext, before: list[float], threshold: float) -> Watch | None:
        """The check of a streamed trace continuing a path whose token confidences are
        ``before``: stop at the first window below the threshold among the new tokens
        (``None`` when traces go by chunks)."""
        if not self._streams(ctx):
            return None

        def dropped(so_far: Completion) -> bool:
            confidences = before + token_confidences([Step.from_completion(so_far)])
            return first_drop(confidences, self.window, threshold, start=len(before)) is not None

        return Watch(every=self.chunk, stop=dropped)

    def _chunk_params(self, ctx: SearchContext, node: Node, watch: Watch | None = None) -> SamplingParams | None:
        """The next request's params: the rest of the budget when watched, else a chunk."""
        remaining = ctx.config.max_tokens - node.num_tokens
        if remaining <= 0:
            return None
        return ctx.adjusted(ctx.config.sampling(max_tokens=remaining if watch else min(self.chunk, remaining)))

    async def _trace(self, ctx: SearchContext, node: Node, threshold: float) -> tuple[Node, bool]:
        """Continue one trace (one watched request, or chunk by chunk); stop it when a
        window drops below the threshold. Returns its last node and whether it was stopped."""
        checked = 0
        while True:
            confidences = token_confidences(node.steps())
            drop = first_drop(confidences, self.window, threshold, start=checked)
            if drop is not None:
                node.meta.update(deepconf="stopped", stopped_at_token=drop)
                ctx.prune([node], reason="deepconf: low confidence")
                return node, True
            checked = len(confidences)
            watch = self._watch(ctx, confidences, threshold)
            params = None if node.terminal else self._chunk_params(ctx, node, watch)
            if params is None:
                node.terminal = True
                return node, False
            (node,) = await ctx.generate(node, 1, params, watch)
