"""Particle filtering (Puri et al., 2502.01618; its_hub's ``ParticleFiltering``).

N particles (partial paths) advance one step at a time. After each step the verifier
scores every particle's whole path so far (``config.aggregation``, ``last`` by default);
a particle's log-weight is ``logit(score)``, the score clipped to [1e-7, 1 - 1e-7], so
its weight is proportional to ``p / (1 - p)``. Then all N are resampled in proportion to
their weights (``multinomial``, or ``systematic``: lower variance, a particle of weight
``w`` gets ``floor(N w)`` or ``ceil(N w)`` copies). A finished particle (EOS, a boxed
answer, the token budget) keeps its last weight and stays in the draw. Copies of one
particle are one node of the tree: the next step samples all of them in one request, so
their shared prefix is encoded once, and the tree shows who descends from whom
(``meta["particles"]``: copies after each resampling, ``meta["weight"]``: their share).

Unlike its_hub, nothing waits beyond the problem: one problem's particles wait for each
other, other problems' requests keep the engine's batch full.

Options: ``resampling`` (multinomial | systematic); ``temper`` (its_hub's entropic
variant: in the first half of ``max_steps``, while the effective sample size
``1 / sum(w^2)`` is below N/2, the log-weights are scaled by the largest ``beta`` in (0, 1]
that brings it back to N/2, so one lucky early step cannot take every particle);
``iterations`` (particle Gibbs: each further run keeps the previous run's chosen path as
a reference particle that every step's draw can pick); ``final``: ``weighted-vote`` (the
answer whose particles' weights sum highest: the default, from the quality table, where it
beat ``top`` on MultiArith and GSM8K with the confidence verifier), ``top`` (the particle
with the largest weight, its_hub's rule) or ``vote``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from attrs import define

from reason import Node, SearchContext, SearchOutcome, SearchPolicy
from reason.options import Option
from reason.types import derive_seed

from .common import Steps, choose, final_option, is_finished

CLIP = 1e-7


def log_weight(score: float) -> float:
    """``logit(score)``, the score clipped to [CLIP, 1 - CLIP]."""
    p = min(max(score, CLIP), 1 - CLIP)
    return math.log(p) - math.log1p(-p)


def normalize(log_weights: Sequence[float], beta: float = 1.0) -> list[float]:
    """``softmax(beta * log_weights)``."""
    top = max(log_weights)
    raw = [math.exp(beta * (w - top)) for w in log_weights]
    total = sum(raw)
    return [w / total for w in raw]


def effective_size(weights: Sequence[float]) -> float:
    """Effective sample size of normalized weights, ``1 / sum(w^2)`` (1 to N)."""
    return 1.0 / sum(w * w for w in weights)


def tempered(log_weights: Sequence[float], target: float) -> tuple[list[float], float]:
    """Normalized weights, with the largest ``beta`` in (0, 1] (bisection) whose weights
    have an effective size of at least ``target``; ``beta`` is 1 when they already do."""
    weights = normalize(log_weights)
    if effective_size(weights) >= target:
        return weights, 1.0
    low, high = 0.0, 1.0  # beta = 0 gives uniform weights: effective size N >= target
    for _ in range(40):
        mid = (low + high) / 2
        if effective_size(normalize(log_weights, mid)) >= target:
            low = mid
        else:
            high = mid
    return normalize(log_weights, low), low


def resample(weights: Sequence[float], count: int, rng: random.Random, scheme: str = "multinomial") -> list[int]:
    """``count`` ancestor indices drawn in proportion to ``weights`` (normalized)."""
    if scheme == "multinomial":
        return rng.choices(range(len(weights)), weights=weights, k=count)
    # systematic: one uniform offset, then evenly spaced points through the cumulative weights
    offset = rng.random()
    picks, cumulative, i = [], weights[0], 0
    for k in range(count):
        point = (offset + k) / count
        while point > cumulative and i < len(weights) - 1:
            i += 1
            cumulative += weights[i]
        picks.append(i)
    return picks


@define
class Particle:
    node: Node
    log_weight: float = 0.0
    score: float = 0.5


class ParticleFiltering(SearchPolicy):
    class Options(Steps):
        resampling = Option(str, "multinomial", choices=("multinomial", "systematic"), help="how particles are redrawn each step")
        temper = Option(bool, False, help="in the first half of the steps, temper weights while the effective size is below N/2")
        iterations = Option(
            int, 1, minimum=1, help="particle Gibbs: further runs, each with the last choice as reference particle"
        )
        final = final_option("weighted-vote", "the answer among finished particles: weight-summed vote, largest weight, or vote")

    options: Options

    def __init__(self, config, arg=None, **kwargs):
        super().__init__(config, arg, **kwargs)
        self.resampling = self.options.resampling
        self.temper = self.options.temper
        self.iterations = self.options.iterations
        self.final = self.options.final

    async def run(self, ctx: SearchContext) -> SearchOutcome:
        seed = ctx.config.seed
        rng = random.Random(derive_seed(seed, "particle-filtering", ctx.task.id) if seed is not None else None)
        reference: list[Particle] | None = None
        history: list[dict] = []
        for iteration in range(self.iterations):
            particles, trace = await self._filter(ctx, rng, reference, iteration)
            history.append(trace)
            best = max(particles, key=lambda p: p.log_weight)
            reference = trace["path"][best.node.id]
        finished = _merged(particles)
        candidates = [ctx.candidate(p.node, p.score) for p, _ in finished]
        chosen, meta = choose(candidates, self.final, weights=[share for _, share in finished])
        meta.update(iterations=[{k: v for k, v in t.items() if k != "path"} for t in history])
        return SearchOutcome(candidates=candidates, chosen=chosen, meta=meta)

    async def _filter(
        self, ctx: SearchContext, rng: random.Random, reference: list[Particle] | None, iteration: int
    ) -> tuple[list[Particle], dict]:
        """One filtering run. ``reference`` (particle Gibbs): a path, one particle per step,
        that holds slot 0 of every step instead of a fresh sample. Returns the last
        particles and a trace: each step's ancestors, betas and effective sizes, and every
        particle's history (the reference of the next run)."""
        n, steps = ctx.config.n, self.options.max_steps
        particles = [Particle(ctx.root) for _ in range(n)]
        path: dict[int, list[Particle]] = {ctx.root.id: []}
        trace: dict = {"ancestors": [], "betas": [], "effective_sizes": [], "path": path}
        for step in range(steps):
            live = [i for i, p in enumerate(particles) if not is_finished(ctx, p.node)]
            if not live:
                break
            pinned = reference is not None and step < len(reference)
            if pinned:
                assert reference is not None
                live = [i for i in live if i != 0]
                particles[0] = reference[step]
            grown = await self._advance(ctx, [particles[i] for i in live], last=step == steps - 1, iteration=iteration)
            for i, particle in zip(live, grown):
                path[particle.node.id] = [*path[particles[i].node.id], particle]
                particles[i] = particle
            if pinned:
                path.setdefault(particles[0].node.id, reference[: step + 1])  # type: ignore[index]
            if all(is_finished(ctx, p.node) for p in particles):
                break
            log_weights = [p.log_weight for p in particles]
            if self.temper and step < steps / 2:
                weights, beta = tempered(log_weights, n / 2)
            else:
                weights, beta = normalize(log_weights), 1.0
            ancestors = resample(weights, n - 1 if pinned else n, rng, self.resampling)
            if pinned:
                ancestors = [0, *ancestors]
            trace["ancestors"].append(ancestors)
            trace["betas"].append(round(beta, 4))
            trace["effective_sizes"].append(round(effective_size(weights), 3))
            _record(particles, weights, ancestors)
            particles = [particles[a] for a in ancestors]
        return particles, trace

    async def _advance(self, ctx: SearchContext, particles: list[Particle], last: bool, iteration: int) -> list[Particle]:
        """One more step for every particle (the whole rest on the last step). Copies of a
        node are sampled in one request; a finished particle stays as it is."""
        groups: dict[int, list[int]] = {}
        nodes: dict[int, Node] = {}
        for i, particle in enumerate(particles):
            if not is_finished(ctx, particle.node):
                groups.setdefault(particle.node.id, []).append(i)
                nodes[particle.node.id] = particle.node
        grown = await ctx.gather(
            *((ctx.complete if last else ctx.expand)(nodes[key], len(group)) for key, group in groups.items())
        )
        out = list(particles)
        fresh: list[tuple[int, Node]] = []
        for (key, group), kids in zip(groups.items(), grown):
            if not kids:  # the token budget is spent: the path ends where it is
                nodes[key].terminal = True
                continue
            for i, kid in zip(group, kids):
                kid.meta.update(iteration=iteration)
                fresh.append((i, kid))
        scores = await ctx.score([kid for _, kid in fresh])
        for (i, kid), score in zip(fresh, scores):
            out[i] = Particle(kid, log_weight(score), score)
        return out


def _record(particles: Sequence[Particle], weights: Sequence[float], ancestors: Sequence[int]) -> None:
    """Note on each node how many copies the draw made of it and its weight's share."""
    copies: dict[int, int] = {}
    for a in ancestors:
        copies[particles[a].node.id] = copies.get(particles[a].node.id, 0) + 1
    shares: dict[int, float] = {}
    for particle, weight in zip(particles, weights):
        shares[particle.node.id] = shares.get(particle.node.id, 0.0) + weight
    for node in {p.node.id: p.node for p in particles}.values():
        node.meta.setdefault("particles", []).append(copies.get(node.id, 0))
        node.meta["weight"] = round(shares[node.id], 4)


def _merged(particles: Sequence[Particle]) -> list[tuple[Particle, float]]:
    """Distinct particles of the last step, each with its copies' share of the weight."""
    weights = normalize([p.log_weight for p in particles])
    merged: dict[int, tuple[Particle, float]] = {}
    for particle, weight in zip(particles, weights):
        _, share = merged.get(particle.node.id, (particle, 0.0))
        merged[particle.node.id] = (particle, share + weight)
    return list(merged.values())
