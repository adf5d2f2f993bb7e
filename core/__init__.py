"""reason-runtime: test-time compute for language models, as a runtime.

Public API::

    from reason import Runtime, Task, Config, Option, Options, hookimpl

``import reason`` is deliberately light: no torch, vllm or docker is imported until a
component that needs it is used.
"""

from . import events
from .components import Backend, Dataset, ReflectionTrigger, SearchPolicy, Splitter, Verifier
from .config import Config
from .errors import BackendError, ComponentNotFound, ReasonError, UsageError, VerifierError
from .options import Option, Options
from .registry import get_registry, hookimpl
from .result import SearchOutcome, Solution
from .run import Run
from .runtime import Runtime
from .search_api import SearchContext
from .tree import Node, Tree
from .types import (
    Candidate,
    Completion,
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
)

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendError",
    "Candidate",
    "Completion",
    "ComponentNotFound",
    "Config",
    "Continuation",
    "Dataset",
    "GenerateRequest",
    "Node",
    "Option",
    "Options",
    "ReasonError",
    "ReflectionTrigger",
    "Run",
    "Runtime",
    "SamplingParams",
    "Score",
    "ScoreRequest",
    "SearchContext",
    "SearchOutcome",
    "SearchPolicy",
    "Solution",
    "Splitter",
    "Step",
    "Task",
    "Tree",
    "Usage",
    "UsageError",
    "Verifier",
    "VerifierError",
    "Watch",
    "aggregate",
    "events",
    "get_registry",
    "hookimpl",
    "__version__",
]
