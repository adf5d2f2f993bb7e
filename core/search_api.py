"""The calls a search policy may make: :class:`SearchContext`, what
:meth:`SearchPolicy.run <reason.SearchPolicy.run>` receives.

A policy never talks to a backend or a verifier directly. It awaits :meth:`~SearchContext.expand`,
:meth:`~SearchContext.complete` and :meth:`~SearchContext.score`; each request goes to its engine
at once and is batched there with every other running search's. The context keeps the tree and
the usage, draws each request's seed, applies reflection triggers and reports events, so a
policy is only its search. A whole policy::

    class BestOfN(SearchPolicy):
        async def run(self, ctx: SearchContext) -> SearchOutcome:
            leaves = await ctx.complete(ctx.root, self.config.n)
            scores = await ctx.score(leaves)
            candidates = [ctx.candidate(leaf, s) for leaf, s in zip(leaves, scores)]
            return SearchOutcome(candidates, chosen=max(candidates, key=lambda c: c.score or 0.0))

This module only declares; the runtime's implementation is :class:`reason.context.RunningSearch`.
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from .components import ReflectionTrigger, Verifier
    from .config import Config
    from .result import SearchOutcome
    from .tree import Node, Tree
    from .types import Candidate, SamplingParams, ScoreRequest, Task, Usage, Watch

T = TypeVar("T")


class SearchContext(Protocol):
    """One search of one task, as its policy sees it."""

    task: Task
    config: Config
    """The run's settings: ``n``, ``max_tokens``, ``options`` ..."""
    verifier: Verifier | None
    """The run's verifier (None: the run has none; :meth:`score` then gives 0.0)."""
    reflections: list[tuple[str, ReflectionTrigger]]
    """The run's reflection triggers, with the names the user gave them."""
    tree: Tree
    """Every node the search made; :attr:`root` is the prompt."""
    usage: Usage
    """Tokens, calls and time spent so far (a sub-policy's count here too)."""

    @property
    def root(self) -> Node: ...

    @property
    def elapsed(self) -> float:
        """Seconds since the search started."""
        ...

    @property
    def watches(self) -> bool:
        """Whether the backend honours a ``watch`` (:meth:`generate`): where it does not, a
        search that stops samples midway generates them chunk by chunk."""
        ...

    # -- generating ---------------------------------------------------------------

    async def expand(self, node: Node, n: int = 1, **overrides: Any) -> list[Node]:
        """Sample ``n`` next steps after ``node`` (one step as the splitter defines it);
        ``overrides`` change the sampling (``temperature=0``). Returns the new children
        (``[]`` when the path's token budget is spent, which also marks ``node``
        terminal). A child is terminal when the model ended the text or the budget ran
        out; a reflection trigger may append a reflection node, returned in place of the
        step it follows."""
        ...

    async def complete(self, node: Node, n: int = 1, **overrides: Any) -> list[Node]:
        """Sample ``n`` whole continuations of ``node`` to the end (within the budget)."""
        ...

    async def generate(self, node: Node, n: int, params: SamplingParams, watch: Watch | None = None) -> list[Node]:
        """Low level: sample ``n`` continuations of ``node`` with exactly ``params``;
        ``watch`` (where :attr:`watches`) may stop each one while it is generated."""
        ...

    def step_params(self, node: Node, **overrides: Any) -> SamplingParams | None:
        """The sampling params :meth:`expand` would use after ``node``; ``None`` when the
        path's token budget is spent."""
        ...

    def adjusted(self, params: SamplingParams) -> SamplingParams:
        """``params`` as the run's components need them (a trigger's stop string, the
        layers the verifier reads): for params a policy builds itself for :meth:`generate`."""
        ...

    # -- scoring and choosing -----------------------------------------------------

    async def score(self, nodes: Sequence[Node], verifier: Verifier | None = None) -> list[float]:
        """Score the paths ending at ``nodes`` with the run's verifier (or ``verifier``),
        one value in [0, 1] per node (also stored on the node)."""
        ...

    def score_request(self, node: Node) -> ScoreRequest:
        """What a verifier sees of the path to ``node`` (the task and its steps)."""
        ...

    def answer(self, node: Node) -> str | None:
        """The final answer of the path to ``node`` (None: it has none)."""
        ...

    def candidate(self, node: Node, score: float | None = None) -> Candidate:
        """Record the path to ``node`` as a finished candidate of the search."""
        ...

    def prune(self, nodes: Sequence[Node], reason: str = "") -> None:
        """Mark ``nodes`` as dropped by the search (the tree and the viewer show it)."""
        ...

    # -- reflection -----------------------------------------------------------------

    def reflect_after_score(self, node: Node) -> Node:
        """Give the run's triggers ``node`` with its stored score; the new leaf (a
        reflection node) or ``node`` itself."""
        ...

    def inject(self, node: Node, text: str, trigger: str = "manual", suppress: str | None = None) -> Node:
        """Append ``text`` after ``node`` as a reflection node; the path re-opens."""
        ...

    # -- composing --------------------------------------------------------------------

    async def gather(self, *aws: Coroutine[Any, Any, T]) -> list[T]:
        """Run sub-searches side by side, results in order; the first failure cancels the
        others (no orphaned sub-search keeps the engine busy)."""
        ...

    async def run_policy(self, config: Config) -> SearchOutcome:
        """Run the policy ``config.search`` on this task and tree and return its outcome;
        its usage counts in this search's. Declare such configs in
        :meth:`SearchPolicy.sub_configs` so they are checked before the search starts."""
        ...
