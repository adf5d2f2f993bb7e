"""Pieces the step-level searches share: when a path is finished, how to spread a
sampling budget over kept paths, how to pick the final answer, and how to let
verifier-driven reflection re-open finished solutions."""

from __future__ import annotations

import re
from collections.abc import Sequence

import reason
from reason import Candidate, Node, SearchContext, answers
from reason.options import Option

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


FINALS = ("top", "vote", "weighted-vote")
"""How a tree search picks its answer among the candidates it gathered (``-o final=``)."""

_RULES = {"top": "naive", "vote": "majority", "weighted-vote": "weighted"}


def final_option(default: str | None, help: str, extra: Sequence[str] = ()) -> Option[str | None]:  # noqa: A002
    """The ``final`` option a tree search declares: :data:`FINALS` (plus ``extra``
    policy-specific choices), with the policy's default and help."""
    return Option(str, default, choices=(*FINALS, *extra), help=help)


class Steps(reason.Options):
    """The options of every search that grows paths a step per round."""

    max_steps = Option(int, 40, minimum=1, help="rounds of step-level search; the last one completes every path [--max-steps]")


class Weighted(reason.Options):
    """The options of a search whose final rule defaults to best-of-N's."""

    weighted = Option(bool, False, help="choose by score-weighted vote instead of the top score [--weighted]")


def final_rule(final: str | None, weighted: bool) -> str:
    """``final``, or best-of-N's rule where it is unset: ``weighted-vote`` with ``weighted``, else ``top``."""
    return final or ("weighted-vote" if weighted else "top")


def choose(
    candidates: Sequence[Candidate],
    final: str,
    weights: Sequence[float] | None = None,
) -> tuple[Candidate | None, dict]:
    """The final choice among scored candidates, by ``final``:

    - ``top``: the highest score (naive best-of-N);
    - ``vote``: the most frequent answer (self-consistency), then its best candidate;
    - ``weighted-vote``: the answer whose candidates' scores sum highest, then its best
      candidate (search-and-learn's weighted best-of-N).

    ``weights`` replace the scores in the ranking and the sums (particle filtering
    weighs by its particle weights). The rules are :func:`reason.answers.choose`'s, the
    ones ``reason eval`` measures."""
    if not candidates:
        return None, {"mode": "none", "final": final}
    mode = _RULES[final]
    ranks = list(weights) if weights is not None else [c.score for c in candidates]
    index, total = answers.choose([c.answer for c in candidates], ranks, mode)
    assert index is not None  # there are candidates
    meta: dict = {"mode": mode, "final": final}
    if mode != "naive":
        meta["answer_weight"] = total
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
