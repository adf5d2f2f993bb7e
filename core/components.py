"""The interfaces a plugin implements: backends, splitters, verifiers, search policies,
reflection triggers and datasets.

A plugin registers a *factory* under a name (see :mod:`reason.hookspecs`). The runtime
builds a component by calling ``factory(config, arg, options=options)``: ``config`` is the
run's :class:`~reason.config.Config`, ``arg`` is the text after a colon in the name the
user gave (``ministep:32`` -> ``arg="32"``) or ``None``, and ``options`` the component's
own options, parsed (its nested :class:`Options` class, see :mod:`reason.options`). Every
:class:`Component` subclass is such a factory.

A Runtime keeps one splitter and one verifier per distinct options and Config, the
fields that change from one solve to the next aside (:data:`reason.config.SOLVE_FIELDS`: a kept
component takes those from each request, never from ``self.config``).

Splitters, verifiers and reflection triggers are plain synchronous objects; a verifier
is called with whole batches in a worker thread (the requests that arrived while its last
batch ran, up to its ``max_batch``). A backend is either synchronous too, or a
*continuous* engine that takes each request as it comes (:meth:`Backend.generate_async`).
Search policies are async, because they are written as sequential code that awaits the
runtime's engines.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from .options import Options as BaseOptions
from .types import Completion, GenerateRequest, SamplingParams, Score, ScoreRequest, Step, Task

if TYPE_CHECKING:
    from .config import Config
    from .engine import EngineStats
    from .events import Event
    from .result import SearchOutcome
    from .search_api import SearchContext


class Component:
    """Base of every component: keeps the config, the colon argument and its options."""

    Options: ClassVar[type[BaseOptions]] = BaseOptions
    """The options this component takes: a subclass of :class:`reason.Options` nested in
    the component's class (the base declares none)."""

    options: BaseOptions
    """This component's options, parsed (``self.options.width``)."""

    spec: str = ""
    """The name the user chose for this component ("prm:DIR"), set by the runtime when it
    builds the component: events and the tree name it so. Empty when built directly."""

    def __init__(self, config: Config, arg: str | None = None, *, options: BaseOptions | None = None) -> None:
        """``options``: parsed by the registry for the name the component is registered
        under; built directly, the component reads them from ``config.options``' flat
        names, or takes ``options=Cls.Options(...)``."""
        self.config = config
        self.arg = arg
        self.options = options if options is not None else type(self).Options.from_run(config.options)

    @property
    def label(self) -> str:
        """How events and logs name this component: its :attr:`spec`, else its class."""
        return self.spec or type(self).__name__

    def close(self) -> None:
        """Release resources (models, containers, connections). Called once at shutdown."""

    emitter: Callable[[Event], None] | None = None
    """Where :meth:`emit` sends events: set by the runtime when it builds the component
    (:meth:`adopt`); ``None``: a component used on its own reports to nobody."""

    def adopt(self, spec: str, emitter: Callable[[Event], None]) -> None:
        """Called by the runtime that built this component: the name the user chose for
        it, and where its events go."""
        self.spec = spec
        self.emitter = emitter

    def emit(self, event: Event) -> None:
        """Report an event (e.g. :class:`~reason.events.EngineStep` statistics), from any
        thread."""
        if self.emitter is not None:
            self.emitter(event)


class Backend(Component, ABC):
    """A policy model that continues text.

    Two ways to serve requests:

    - *batch*: implement only :meth:`generate`. The runtime calls it in a worker thread
      with every request that arrived while the previous call ran, so it should batch
      internally; a call lasts as long as its longest sequence.
    - *continuous*: also override :meth:`generate_async`. The runtime then submits each
      request the moment a search makes it, and the backend batches whatever is in flight
      (a finished sequence leaves the batch at once, waiting ones join between decode
      steps). This keeps the engine full while tree searches wait on their own requests.

    Either way each request gets exactly ``request.n`` completions, and a request with a
    seed gets the same samples whatever else is being generated.
    """

    @abstractmethod
    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
        """Sample ``request.n`` completions for each request, in request order (blocking)."""

    async def generate_async(
        self, request: GenerateRequest, *, on_text: Callable[[int, str], None] | None = None
    ) -> list[Completion]:
        """Sample ``request.n`` completions of one request, resolving when all of them are
        done. Called from the runtime's event loop, concurrently for many requests, so it
        must not block the loop. Cancelling the await must free the request's slots.
        ``on_text`` is only passed where :attr:`streams_text` says the backend calls it.

        Continuous backends implement this and say :attr:`continuous`; the default only
        exists so that the method can be named."""
        raise NotImplementedError(f"{type(self).__name__} has no continuous engine; the runtime batches its generate()")

    streams_text: bool = False
    """True when :meth:`generate_async` also takes ``on_text``: a callable
    ``on_text(sample_index, text_so_far)`` it calls (from any thread) as tokens come."""

    watches: bool = False
    """True when the backend honours :attr:`GenerateRequest.watch` (checks each sample
    every ``watch.every`` tokens and ends it when ``watch.stop`` says so). A search that
    must stop samples midway asks :attr:`reason.SearchContext.watches` and, where it is
    False, generates chunk by chunk instead."""

    @property
    def rows(self) -> int | None:
        """How many sequences the engine decodes together, once loaded; ``None`` where it
        does not say (servers, batch backends). ``solve_many`` sizes the problems it keeps
        in flight by it."""
        return None

    @property
    def failure(self) -> str | None:
        """Why this backend can serve no more requests until it is built again (its engine
        process died, its decode loop is gone), or ``None`` while it can. A long-lived
        caller (``reason serve``) reads it after a failed request, and on health checks,
        to rebuild instead of failing every later request. Default: never fails this way."""
        return None

    continuous: bool = False
    """Whether the runtime submits requests one by one to :meth:`generate_async` (a
    backend that implements it says True) instead of batching calls to :meth:`generate`."""

    stats: EngineStats | None = None
    """What the engine computed since it started (a continuous engine keeps one), for
    benchmarks and ``reason serve``'s ``/health``; None where the backend keeps none."""

    @property
    def rows_in_flight(self) -> int | None:
        """Sequences the engine holds right now; None where it does not say."""
        return None

    def encode(self, text: str) -> list[int] | None:
        """The token ids of ``text`` as the model reads it; None where the backend cannot
        count tokens (a remote server). ``reason serve`` refuses a prompt that does not fit
        :attr:`context_length` with it."""
        return None

    @property
    def context_length(self) -> int | None:
        """Tokens the model takes, prompt and answer together, once loaded; None where
        unknown."""
        return None

    @abstractmethod
    def format_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        """Render chat messages (``{"role", "content"}``) into the raw prompt text that
        ``generate`` continues, ending where the assistant's reply starts."""

    @property
    def model_name(self) -> str:
        return str(self.config.model or "")

    def load(self) -> None:
        """Load the model (or reach the server) now instead of on the first ``generate``,
        so that a run can time its problems without the start-up. Default: nothing."""


class Splitter(Component, ABC):
    """Decides what one *step* is."""

    @abstractmethod
    def step_params(self, params: SamplingParams) -> SamplingParams:
        """Return sampling params that make the backend stop after one step
        (stop strings and/or a token limit)."""

    @abstractmethod
    def split(self, text: str) -> list[str]:
        """Cut a whole solution into steps whose concatenation is ``text``."""


class Verifier(Component, ABC):
    """Scores paths, step by step. Called in a worker thread with the paths whose scores
    were asked for while the previous call ran, up to :attr:`max_batch` (one call at a
    time per verifier)."""

    hidden_layers: tuple[int, ...] = ()
    """Layers of the policy whose states this verifier reads (transformers' numbering:
    ``k`` is block ``k``'s output). A run asks its backend to capture them while it samples;
    where the backend can (transformers), each step arrives with them (``Step.hidden``) and
    the verifier need not run the policy over the path again."""

    max_batch: int | None = 64
    """The most paths one :meth:`score` call gets (``None``: every path waiting). Paths
    asked for together by one search are never split; beyond this, the rest wait for the
    next call. A call runs to its end, so a small one lets the searches it scored go on
    sooner and a stop wait less; a large one lets a verifier that batches its forward
    passes pad less."""

    @abstractmethod
    def score(self, requests: Sequence[ScoreRequest]) -> list[Score]:
        """Return one :class:`Score` per request with one score per step, each in [0, 1]."""


class ReflectionTrigger(Component, ABC):
    """Decides when to make the model reconsider, and with what text.

    Both methods return the text to inject (it becomes a visible reflection node in the
    tree and the model continues after it), or ``None`` to leave the path alone.
    ``reflections`` is how many times this path was already reflected on, so triggers can
    cap themselves.
    """

    suppress: str | None = None
    """Text dropped from the end of the step this trigger reflects after, before its own
    text goes in (s1's budget forcing drops the end-of-thinking delimiter). Default: none."""

    def adjust_params(self, params: SamplingParams) -> SamplingParams:
        """Change sampling before a step is generated (e.g. add a stop string). Default: none."""
        return params

    def on_step(self, task: Task, steps: Sequence[Step], score: Score | None, reflections: int) -> str | None:
        """Called after each new step (with its verifier score when there is one)."""
        return None

    def on_finish(self, task: Task, steps: Sequence[Step], score: Score | None, reflections: int) -> str | None:
        """Called when a path ends (EOS or answer). Injected text re-opens the path."""
        return None


class SearchPolicy(Component, ABC):
    """A test-time search algorithm, written as plain sequential async code.

    ``run`` awaits ``ctx.expand``/``ctx.complete``/``ctx.score``; each request goes to its
    engine at once and is batched there with every other search's requests, so policies
    never batch by hand.
    """

    @abstractmethod
    async def run(self, ctx: SearchContext) -> SearchOutcome:
        """Search for an answer to ``ctx.task`` and return the candidates and the choice."""

    reads_n: ClassVar[bool] = True
    """Whether what the policy does depends on ``--n`` (greedy's does not): ``reason eval``
    names a run's directory by ``n`` only where it does."""

    @property
    def width(self) -> int:
        """Sequences one search has in flight at most (default ``--n``): with the engine's
        :attr:`Backend.rows` it sizes how many problems run at once."""
        return int(self.config.n)

    def sub_configs(self) -> Sequence[Config]:
        """The configs of the sub-policies :meth:`run` may start with
        :meth:`SearchContext.run_policy` (compute-optimal's table rows). The runtime
        checks their components and options with the run's, and builds their verifiers
        and splitters before the search starts. Default: none."""
        return ()


class Dataset(Component, ABC):
    """A benchmark: yields tasks with references, and grades answers."""

    @abstractmethod
    def load(self) -> Iterable[Task]:
        """Yield the tasks, in a stable order (``--offset``/``--limit`` index into it)."""

    def is_correct(self, task: Task, answer: str | None, **extra: Any) -> bool:
        """Whether ``answer`` is right for ``task``. Default: math equivalence
        (:func:`reason.answers.is_equivalent`)."""
        from .answers import is_equivalent

        return answer is not None and task.reference is not None and is_equivalent(answer, task.reference)
