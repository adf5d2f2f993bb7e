"""Self-consistency (Wang et al., 2022): sample N solutions, answer with the most frequent
final answer (equivalent answers vote together). No verifier needed; the score of the
choice is its vote share."""

from reason import SearchContext, SearchOutcome, SearchPolicy
from reason.answers import is_equivalent, vote


class SelfConsistency(SearchPolicy):
    async def run(self, ctx: SearchContext) -> SearchOutcome:
        leaves = await ctx.complete(ctx.root, ctx.config.n)
        answers = [ctx.answer(leaf) for leaf in leaves]
        winner, votes = vote(answers)
        share = votes / len(leaves) if leaves else 0.0
        candidates = [
            ctx.candidate(leaf, share if answer is not None and winner is not None and is_equivalent(answer, winner) else 0.0)
            for leaf, answer in zip(leaves, answers)
        ]
        chosen = next((c for c in candidates if c.score == share and winner is not None), candidates[0] if candidates else None)
        return SearchOutcome(candidates=candidates, chosen=chosen, meta={"votes": votes, "share": share})
