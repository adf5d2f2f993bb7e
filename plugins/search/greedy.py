"""Greedy decoding: one solution at temperature 0. The baseline every other strategy
should beat at equal budget."""

from reason import SearchContext, SearchOutcome, SearchPolicy


class Greedy(SearchPolicy):
    reads_n = False  # one answer whatever --n says

    @property
    def width(self) -> int:
        return 1

    async def run(self, ctx: SearchContext) -> SearchOutcome:
        (leaf,) = await ctx.complete(ctx.root, 1, temperature=0.0)
        (score,) = await ctx.score([leaf]) if ctx.verifier else (None,)
        candidate = ctx.candidate(leaf, score)
        return SearchOutcome(candidates=[candidate], chosen=candidate)
