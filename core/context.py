"""The runtime's :class:`~reason.search_api.SearchContext`: :class:`RunningSearch`, one
search in progress (what a policy may call is declared in :mod:`reason.search_api`; read
that one to write a policy). Each request goes to its engine (:mod:`reason.engine`) at
once; this class keeps the tree and the usage, draws seeds, applies reflection triggers
and reports events.

Seeds: with a run seed, each request gets a seed of its own, derived from the run's seed,
the key of the node it starts from (:attr:`Node.key`) and how many requests that node has
started before. One seed for every request would draw the same samples for every request
from the same node: DVTS's subtrees, all started at the root, would be copies of one
subtree, and a rollout repeated from an MCTS node would repeat itself. Keys, unlike node
ids, do not depend on which request finished first, so a seeded search stays
reproducible. The root's first request keeps the run's seed itself, so best-of-N and
self-consistency draw what one ``reason solve --seed`` request draws.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
from attrs import frozen

from . import answers
from .aio import gather_all
from .components import ReflectionTrigger, SearchPolicy, Splitter, Verifier
from .config import Config
from .events import AnswerFound, Event, NodesPruned, ReflectionInjected, StepsGenerated, StepsScored, TextGenerated
from .tree import Node, Tree
from .types import (
    Candidate,
    Continuation,
    GenerateRequest,
    SamplingParams,
    Score,
    ScoreRequest,
    Step,
    Task,
    Usage,
    Watch,
    aggregate,
    derive_seed,
)

if TYPE_CHECKING:
    from .engine import Engines
    from .result import SearchOutcome

T = TypeVar("T")


@frozen
class PolicyParts:
    """What one search runs with: the policy and the components of its config."""

    search: SearchPolicy
    splitter: Splitter
    verifier: Verifier | None
    reflections: list[tuple[str, ReflectionTrigger]]


class RunningSearch:
    """One search of one task: the runtime's :class:`~reason.search_api.SearchContext`."""

    def __init__(
        self,
        *,
        task: Task,
        config: Config,
        prompt: str,
        engines: Engines,
        splitter: Splitter,
        verifier: Verifier | None,
        reflections: Sequence[tuple[str, ReflectionTrigger]] = (),
        emit: Any,
        policies: Callable[[Config], PolicyParts] | None = None,
        parent: RunningSearch | None = None,
    ) -> None:
        """``policies(config)`` builds what :meth:`run_policy` runs (the Runtime's);
        ``parent``: the context a sub-policy's context shares its tree and usage with."""
        self.task = task
        self.config = config
        self.prompt = prompt
        self.splitter = splitter
        self.verifier = verifier
        self.reflections = list(reflections)
        self.tree: Tree = parent.tree if parent is not None else Tree(prompt=prompt)
        self.usage = Usage()
        self.stream_text: bool = parent.stream_text if parent is not None else False
        """Emit :class:`TextGenerated` as tokens come (``Runtime.stream(tokens=True)``)."""
        self._engines = engines
        self._emit = emit
        self._policies = policies
        self._parent = parent
        self._start: float = parent._start if parent is not None else time.perf_counter()
        self._root: RunningSearch = parent._root if parent is not None else self
        self._asked = False
        """Whether this task's search has made a request (kept on the root context)."""

    # -- bookkeeping ----------------------------------------------------------------

    @property
    def root(self) -> Node:
        return self.tree.root

    def emit(self, event: Event) -> None:
        self._emit(event)

    def add_usage(self, usage: Usage) -> None:
        self.usage = self.usage + usage
        if self._parent is not None:  # a sub-policy's spending is its caller's
            self._parent.add_usage(usage)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    async def gather(self, *aws: Coroutine[Any, Any, T]) -> list[T]:
        """Run sub-searches (coroutines) side by side and return their results in order.
        Unlike ``asyncio.gather``, the first failure cancels the siblings, so no orphaned
        sub-search keeps the engine busy."""
        return await gather_all(*aws)

    async def run_policy(self, config: Config) -> SearchOutcome:
        """Run the search policy ``config.search`` with ``config`` on this task and this
        tree, and return its outcome: the sanctioned way for a policy to hand over to
        another (compute-optimal runs the strategy its probe chose). The runtime builds
        the policy and the splitter, verifier and reflection triggers of ``config`` (the
        same checks as a solve's; the backend stays the run's), and the sub-policy gets
        a context of its own whose usage counts in this one's. Declare the configs in
        :meth:`SearchPolicy.sub_configs` so they are checked, and their models loaded,
        before the search starts."""
        if self._policies is None:
            raise RuntimeError("this search was built without a runtime, so it cannot run another policy")
        parts = self._policies(config)
        child = RunningSearch(
            task=self.task,
            config=config,
            prompt=self.prompt,
            engines=self._engines,
            splitter=parts.splitter,
            verifier=parts.verifier,
            reflections=parts.reflections,
            emit=self._emit,
            policies=self._policies,
            parent=self,
        )
        return await parts.search.run(child)

    # -- generation -----------------------------------------------------------------

    def step_params(self, node: Node, **overrides: Any) -> SamplingParams | None:
        """Sampling params for the next step after ``node``; ``None`` when the path's token
        budget (``config.max_tokens``) is spent."""
        remaining = self.config.max_tokens - node.num_tokens
        if remaining <= 0:
            return None
        params = self.adjusted(self.splitter.step_params(self.config.sampling(**overrides)))
        if params.max_tokens > remaining:
            params = attrs.evolve(params, max_tokens=remaining)
        return params

    def adjusted(self, params: SamplingParams) -> SamplingParams:
        """``params`` as the run's components need them: each reflection trigger's change
        (a stop string), and the layers whose states the verifier reads."""
        for _, trigger in self.reflections:
            params = trigger.adjust_params(params)
        if self.verifier is not None and self.verifier.hidden_layers:
            params = attrs.evolve(params, hidden_layers=self.verifier.hidden_layers)
        return params

    async def expand(self, node: Node, n: int = 1, **overrides: Any) -> list[Node]:
        """Sample ``n`` next steps after ``node`` (one step as the splitter defines it).

        Returns the new child nodes (``[]`` when the path's budget is spent, which also
        marks ``node`` terminal). A child is terminal when the model ended the text or
        the budget ran out; reflection triggers may append a reflection node, which is
        returned in place of the step it follows.
        """
        params = self.step_params(node, **overrides)
        if params is None:
            node.terminal = True
            return []
        return await self._generate(node, n, params)

    async def complete(self, node: Node, n: int = 1, **overrides: Any) -> list[Node]:
        """Sample ``n`` whole continuations of ``node`` to the end (within the budget)."""
        remaining = self.config.max_tokens - node.num_tokens
        if remaining <= 0:
            node.terminal = True
            return []
        params = self.adjusted(self.config.sampling(max_tokens=remaining, **overrides))
        children = await self._generate(node, n, params, whole=True)
        # A reflection trigger may have re-opened a finished path, or stopped it at a stop
        # string of its own (budget forcing's "</think>"): let the model go on (each
        # trigger caps how often it fires; the token budget bounds the rest).
        reopened = [i for i, child in enumerate(children) if not child.terminal]
        if reopened:
            continued = await self.gather(*(self.complete(children[i], 1, **overrides) for i in reopened))
            for i, leaves in zip(reopened, continued):
                if leaves:
                    children[i] = leaves[0]
        return children

    @property
    def watches(self) -> bool:
        """Whether the backend honours a ``watch`` (:meth:`generate`): where it does not, a
        search that stops samples midway generates them chunk by chunk."""
        return self._engines.backend_watches

    async def generate(self, node: Node, n: int, params: SamplingParams, watch: Watch | None = None) -> list[Node]:
        """Low level: sample ``n`` continuations of ``node`` with exactly ``params``;
        ``watch`` (where :attr:`watches`) may stop each one while it is generated."""
        return await self._generate(node, n, params, watch=watch)

    async def _generate(
        self, node: Node, n: int, params: SamplingParams, whole: bool = False, watch: Watch | None = None
    ) -> list[Node]:
        draw = _next_draw(node)
        if params.seed is not None and (draw or node.parent is not None):
            params = attrs.evolve(params, seed=derive_seed(params.seed, "node", node.key, draw))
        sampled = node.sampled_ids()
        continues = Continuation(self.prompt, sampled) if sampled else None
        request = GenerateRequest(prompt=self.prompt + node.text(), params=params, n=n, watch=watch, continues=continues)
        start = time.perf_counter()
        on_text = None
        if self.stream_text:

            def on_text(sample: int, text: str) -> None:
                self.emit(TextGenerated(task_id=self.task.id, parent_id=node.id, sample=sample, text=text))

        opening = not self._root._asked
        self._root._asked = True
        completions = await self._engines.generate(self, request, on_text, opening=opening)
        children = []
        for index, completion in enumerate(completions):
            child = self.tree.add(node, Step.from_completion(completion), key=f"{node.key}/{draw}.{index}")
            spent = child.num_tokens >= self.config.max_tokens
            child.terminal = completion.finished or spent or (whole and completion.finish_reason != "stop")
            if whole:
                child.meta["whole"] = True
            children.append(child)
        self.emit(
            StepsGenerated(
                task_id=self.task.id,
                node_ids=tuple(c.id for c in children),
                parent_id=node.id,
                prompt_tokens=completions[0].prompt_tokens if completions else 0,
                completion_tokens=sum(c.num_tokens for c in completions),
                seconds=time.perf_counter() - start,
            )
        )
        return [self._reflect(child, None) for child in children]

    # -- verification ---------------------------------------------------------------

    def score_request(self, node: Node) -> ScoreRequest:
        """The verifier's view of the path to ``node``: whole-solution nodes are cut into
        steps by the splitter so step-level verifiers see steps."""
        steps: list[Step] = []
        for step_node in node.path():
            step = step_node.step
            assert step is not None
            if step_node.meta.get("whole") and not step.injected:
                steps.extend(split_step(step, self.splitter.split(step.text)))
            else:
                steps.append(step)
        return ScoreRequest(task=self.task, prompt=self.prompt, steps=tuple(steps))

    async def score(self, nodes: Sequence[Node], verifier: Verifier | None = None) -> list[float]:
        """Score the paths ending at ``nodes`` with the run's verifier (or ``verifier``).

        Stores each step score on the node (``node.scores[name]``, the full
        :class:`Score` in ``node.meta["score"]``) and returns each path's score reduced by
        ``config.aggregation``. Without a verifier every path scores 0.
        """
        verifier = verifier or self.verifier
        if verifier is None or not nodes:
            return [0.0] * len(nodes)
        name = verifier.label
        start = time.perf_counter()
        results: list[Score] = await self._engines.score(self, verifier, [self.score_request(n) for n in nodes])
        values = []
        for node, result in zip(nodes, results):
            node.scores[name] = result.last
            node.meta["score"] = result
            values.append(aggregate(result.step_scores, self.config.aggregation))
        self.emit(
            StepsScored(
                task_id=self.task.id,
                verifier=name,
                node_ids=tuple(n.id for n in nodes),
                scores=tuple(values),
                seconds=time.perf_counter() - start,
            )
        )
        return values

    # -- reflection -----------------------------------------------------------------

    def _reflect(self, node: Node, score: Score | None) -> Node:
        """Give each trigger a chance to inject text after ``node``; return the new leaf."""
        for name, trigger in self.reflections:
            steps = node.steps()
            if node.terminal:
                text = trigger.on_finish(self.task, steps, score, node.reflections)
            else:
                text = trigger.on_step(self.task, steps, score, node.reflections)
            if text:
                return self.inject(node, text, trigger=name, suppress=trigger.suppress)
        return node

    def reflect_after_score(self, node: Node) -> Node:
        """Run the triggers on ``node`` with its stored verifier score (call after
        :meth:`score` where a policy wants verifier-driven reflection)."""
        return self._reflect(node, node.meta.get("score"))

    def inject(self, node: Node, text: str, trigger: str = "manual", suppress: str | None = None) -> Node:
        """Append runtime text after ``node`` as a reflection node; the path re-opens.

        ``suppress``: text dropped from the end of ``node``'s step first (s1 budget
        forcing removes the end-of-thinking delimiter before appending "Wait"); the
        step's tokens are kept, as they were generated and paid for."""
        if suppress and node.step is not None and node.step.text.endswith(suppress):
            node.step = attrs.evolve(node.step, text=node.step.text[: -len(suppress)])
            node.meta["suppressed"] = suppress
        node.terminal = False
        key = f"{node.key}/{_next_draw(node)}.{trigger}"
        child = self.tree.add(node, Step(text=text, injected=True), kind="reflection", key=key, trigger=trigger)
        self.emit(ReflectionInjected(task_id=self.task.id, trigger=trigger, node_id=child.id, parent_id=node.id, text=text))
        return child

    # -- answers --------------------------------------------------------------------

    def answer(self, node: Node) -> str | None:
        """Extract (and remember) the final answer of the path to ``node``."""
        text = node.text()
        node.answer = answers.extract_code(text) if self.task.kind == "code" else answers.extract_answer(text)
        return node.answer

    def candidate(self, node: Node, score: float | None = None) -> Candidate:
        """Record ``node`` as a finished candidate (emits :class:`AnswerFound`)."""
        answer = node.answer if node.answer is not None else self.answer(node)
        result = node.meta.get("score")
        candidate = Candidate(
            node_id=node.id,
            text=node.text(),
            answer=answer,
            score=score,
            step_scores=result.step_scores if result is not None else (),
        )
        self.emit(AnswerFound(task_id=self.task.id, node_id=node.id, answer=answer, score=score))
        return candidate

    def prune(self, nodes: Sequence[Node], reason: str = "") -> None:
        for node in nodes:
            node.pruned = True
        if nodes:
            self.emit(NodesPruned(task_id=self.task.id, node_ids=tuple(n.id for n in nodes), reason=reason))


def _next_draw(node: Node) -> int:
    """Count a request (or reflection) started from ``node``; return its index there. Called
    before the first await, in the order searches make requests (see the module doc)."""
    node.draws += 1
    return node.draws - 1


def split_step(step: Step, pieces: Sequence[str]) -> list[Step]:
    """Cut one generated step into ``pieces`` (whose concatenation is its text), giving
    each piece its share of the tokens, proportional to its length in characters (token
    boundaries are not known here; this is only used for scoring whole solutions)."""
    if len(pieces) <= 1:
        return [step]
    total = max(1, sum(len(p) for p in pieces))
    n_tokens = len(step.token_ids)
    out: list[Step] = []
    start = 0
    seen = 0
    for i, piece in enumerate(pieces):
        seen += len(piece)
        end = n_tokens if i == len(pieces) - 1 else max(start, round(n_tokens * seen / total))
        out.append(
            Step(
                text=piece,
                token_ids=step.token_ids[start:end],
                logprobs=step.logprobs[start:end],
                top_logprobs=step.top_logprobs[start:end],
                finish_reason=step.finish_reason if i == len(pieces) - 1 else "stop",
                hidden=None if step.hidden is None else step.hidden[start:end],
            )
        )
        start = end
    return out
