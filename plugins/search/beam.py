"""PRM beam search (HF search-and-learn; Snell et al., 2408.03314).

N paths are active. Each round every active path gets one more step (as the splitter
defines it), every new path is scored by the verifier (``config.aggregation``, "last"
by default), the best N/M unfinished paths are kept and each is expanded M times in the
next round, so N paths stay active. A path that finishes (EOS, a boxed answer, or its
token budget) moves to the completed set. The last of ``max_steps`` rounds completes
every remaining path to the end. The answer is chosen among the completed paths by
``final``.

The final rule (``-o beam.final``) matters with a weak verifier: on the quality table
beam's paths collapse onto few answers and every rule got 32% on GSM8K, while DVTS's top
path lost to its weighted vote (26% vs 34%). ``reason plugins`` lists the options.
"""

from __future__ import annotations

from reason import Node, SearchContext, SearchOutcome, SearchPolicy
from reason.options import Option

from .common import Steps, Weighted, choose, distribute, final_option, final_rule, is_finished, reflect_on_scores


class BeamSearch(SearchPolicy):
    class Options(Steps, Weighted):
        width = Option(
            int, 4, minimum=1, alias="beam_width", help="M: each kept path is expanded M times, N/M are kept [--beam-width]"
        )
        lookahead = Option(int, 0, minimum=0, help="score each new step by a greedy continuation of k more steps")
        dedup = Option(bool, False, help="drop new paths whose text repeats one already kept this round")
        final = final_option(None, "the answer among completed paths: top score, vote, or score-weighted vote [--weighted]")

    options: Options

    async def run(self, ctx: SearchContext) -> SearchOutcome:
        n, m = ctx.config.n, self.options.width
        keep = max(1, n // m)
        plan: list[tuple[Node, int]] = [(ctx.root, n)]
        completed: list[tuple[Node, float]] = []
        score_of: dict[int, float] = {}
        rounds = 0
        for round_index in range(self.options.max_steps):
            rounds += 1
            last = round_index == self.options.max_steps - 1
            grown = await ctx.gather(*((ctx.complete if last else ctx.expand)(node, count) for node, count in plan))
            children: list[Node] = []
            for (node, _), kids in zip(plan, grown):
                if kids:
                    children.extend(kids)
                elif node is not ctx.root:  # the path's token budget is spent: it is done
                    completed.append((node, score_of.get(node.id, 0.0)))
            for child in children:
                child.meta["round"] = round_index
            scores = await self._score(ctx, children, last)
            if ctx.reflections and not last:
                children = self._reflect(ctx, children, scores, score_of)
            else:
                if ctx.reflections:  # the last round: re-opened paths must still end now
                    children, scores = await reflect_on_scores(ctx, children, scores)
                score_of.update((c.id, s) for c, s in zip(children, scores))
            open_: list[Node] = []
            for child in children:
                if last or is_finished(ctx, child):
                    completed.append((child, score_of[child.id]))
                else:
                    open_.append(child)
            if self.options.dedup:
                open_ = self._dedup(ctx, open_)
            if not open_:
                break
            ranked = sorted(open_, key=lambda c: score_of[c.id], reverse=True)
            kept, dropped = ranked[:keep], ranked[keep:]
            ctx.prune(dropped, reason="beam")
            plan = list(zip(kept, distribute(n, len(kept))))

        completed.sort(key=lambda pair: pair[1], reverse=True)
        candidates = [ctx.candidate(node, score) for node, score in completed[:n]]
        chosen, meta = choose(candidates, final_rule(self.options.final, self.options.weighted))
        meta.update(rounds=rounds, completed=len(completed), keep=keep, expansions=m)
        return SearchOutcome(candidates=candidates, chosen=chosen, meta=meta)

    async def _score(self, ctx: SearchContext, children: list[Node], last: bool) -> list[float]:
        """Score each new path, through its greedy lookahead when one is configured."""
        if not self.options.lookahead or last:
            return await ctx.score(children)
        targets = await ctx.gather(*(self._look_ahead(ctx, child) for child in children))
        scores = await ctx.score(targets)
        for child, target, score in zip(children, targets, scores):
            if target is not child:
                child.meta["lookahead_score"] = score
        return scores

    async def _look_ahead(self, ctx: SearchContext, child: Node) -> Node:
        node = child
        for _ in range(self.options.lookahead):
            if is_finished(ctx, node):
                break
            kids = await ctx.expand(node, 1, temperature=0.0)
            if not kids:
                break
            node = kids[0]
            node.meta["lookahead"] = True
            ctx.prune([node], reason="lookahead")
        return node

    @staticmethod
    def _reflect(ctx: SearchContext, children: list[Node], scores: list[float], score_of: dict[int, float]) -> list[Node]:
        """Verifier-driven reflection: a trigger may append a reflection node after a
        scored step; the path then continues from it, ranked by the step's score."""
        out = []
        for child, score in zip(children, scores):
            node = ctx.reflect_after_score(child)
            score_of[child.id] = score
            score_of[node.id] = score
            out.append(node)
        return out

    @staticmethod
    def _dedup(ctx: SearchContext, nodes: list[Node]) -> list[Node]:
        seen: set[str] = set()
        unique: list[Node] = []
        duplicates: list[Node] = []
        for node in nodes:
            text = node.text()
            (duplicates if text in seen else unique).append(node)
            seen.add(text)
        ctx.prune(duplicates, reason="duplicate")
        return unique
