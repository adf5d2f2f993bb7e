"""Self-consistency (Wang et al., 2022): sample N solutions, answer with the most frequent
final answer (equivalent answers vote together). No verifier needed; the score of the
choice is its vote share. The candidates carry no score: a share counted over all N
samples would tell an eval's @k < N subsets how the other samples voted."""

from attrs import evolve

from reason import SearchContext, SearchOutcome, SearchPolicy
from reason.answers import choose, group_answers


class SelfConsistency(SearchPolicy):
    async def run(self, ctx: SearchContext) -> SearchOutcome:
        leaves = await ctx.complete(ctx.root, ctx.config.n)
        answers = [ctx.answer(leaf) for leaf in leaves]
        groups = group_answers(answers)
        index, votes = choose(answers, rule="majority", groups=groups)
        share = votes / len(leaves) if leaves else 0.0
        candidates = [ctx.candidate(leaf, None) for leaf in leaves]
        chosen = evolve(candidates[index], score=share) if index is not None else None
        return SearchOutcome(candidates=candidates, chosen=chosen, meta={"votes": votes, "share": share})
