"""Best-of-N: sample N solutions, score each with the verifier, pick one.

- naive (default): the solution with the highest score.
- weighted (``--weighted``): sum the scores of the solutions that reach each answer and
  pick the answer with the highest total (then its best-scored solution).

Step scores reduce to one solution score by ``config.aggregation`` (last | min | prod |
mean), as in the PRM literature.
"""

from reason import SearchContext, SearchOutcome, SearchPolicy

from .common import Weighted, choose, final_rule, reflect_on_scores


class BestOfN(SearchPolicy):
    Options = Weighted
    options: Weighted

    async def run(self, ctx: SearchContext) -> SearchOutcome:
        leaves = await ctx.complete(ctx.root, ctx.config.n)
        scores = await ctx.score(leaves)
        leaves, scores = await reflect_on_scores(ctx, leaves, scores)  # on-verifier-fail
        candidates = [ctx.candidate(leaf, score) for leaf, score in zip(leaves, scores)]
        chosen, meta = choose(candidates, final_rule(None, self.options.weighted))
        return SearchOutcome(candidates=candidates, chosen=chosen, meta=meta)
