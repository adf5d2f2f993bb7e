"""Pieces the step-level searches share: when a path is finished, how to spread a
sampling budget over kept paths, how to pick the final answer, and how to let
verifier-driven reflection re-open finished solutions."""

from __future__ import annotations

import re
from collections.abc import Sequence

from reason import Candidate, Node, SearchContext
from reason import answers

_BOXED = re.compile(r"\\boxed\{.*\}", re.DOTALL)

MAX_REFLECTION_ROUNDS = 8
"""Safety bound on reflect-and-continue rounds for one set of leaves (each trigger also
caps itself)."""


def has_answer(text: str) -> bool:
    """Whether ``text`` states a final answer (a closed ``\\boxed{...}``)."""
    return bool(_BOXED.search(text))


def is_finished(ctx: SearchContext, node: Node) -> bool:
    """A path is finished when the model ended it (EOS), its token budget is spent, or
    (math) its last step gave a boxed answer. Injected reflections never finish a path."""
    if node.terminal:
        return True
    if node.step is None or node.kind == "reflection" or ctx.task.kind != "math":
        return False
    return has_answer(node.step.text)


def distribute(total: int, parts: int) -> list[int]:
    """Split ``total`` samples over ``parts`` paths as evenly as possible (earlier paths
    get the remainder): distribute(8, 3) == [3, 3, 2]. Every part gets at least one."""
    if parts <= 0:
        return []
    base, extra = divmod(max(total, parts), parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def choose(ctx: SearchContext, candidates: Sequence[Candidate]) -> tuple[Candidate | None, dict]:
    """The final choice among scored candidates: the highest score (naive), or with
    ``config.weighted`` the answer whose candidates' scores sum highest, then its best
    candidate (search-and-learn's weighted best-of-N). The rules are
    :func:`reason.answers.choose`'s, the ones ``reason eval`` measures."""
    if not candidates:
        return None, {"mode": "none"}
    mode = "weighted" if ctx.config.weighted else "naive"
    index, total = answers.choose([c.answer for c in candidates], [c.score for c in candidates], mode)
    meta = {"mode": mode, "answer_weight": total} if mode == "weighted" else {"mode": mode}
    return candidates[index], meta


async def reflect_on_scores(ctx: SearchContext, leaves: list[Node], scores: list[float]) -> tuple[list[Node], list[float]]:
    """After scoring whole solutions: give verifier-driven triggers (``on-verifier-fail``)
    their say; a path they re-open is continued to the end and scored again, until no
    trigger fires. Returns the final leaves and their scores, in the same order."""
    if not ctx.reflections:
        return leaves, scores
    leaves, scores = list(leaves), list(scores)
    for _ in range(MAX_REFLECTION_ROUNDS):
        reopened = []
        for i, leaf in enumerate(leaves):
            after = ctx.reflect_after_score(leaf)
            if after is not leaf:
                reopened.append((i, after))
        if not reopened:
            break
        continued = await ctx.gather(*(ctx.complete(node, 1) for _, node in reopened))
        ends = [leaves_[0] if leaves_ else node for (_, node), leaves_ in zip(reopened, continued)]
        new_scores = await ctx.score(ends)
        for (i, _), end, score in zip(reopened, ends, new_scores):
            leaves[i], scores[i] = end, score
    return leaves, scores
