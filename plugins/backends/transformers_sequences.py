"""What the transformers backend's decode loop (:mod:`.transformers_loop`) works on: a
submitted request, each of its samples, and the batch of rows decoding together."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from attrs import define, field

from reason.types import Completion, FinishReason, GenerateRequest, SamplingParams

if TYPE_CHECKING:
    import torch


@define(eq=False)
class PendingRequest:
    """A submitted request: its future resolves when all its sequences are done."""

    request: GenerateRequest
    future: concurrent.futures.Future[list[Completion]]
    on_text: Callable[[int, str], None] | None = None
    sequences: list[SequenceState] | None = None
    done: int = 0

    def sample_done(self) -> None:
        assert self.sequences is not None
        self.done += 1
        if self.done == len(self.sequences) and not self.future.done():
            try:
                self.future.set_result([seq.completion() for seq in self.sequences])
            except concurrent.futures.InvalidStateError:  # cancelled meanwhile
                pass

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            try:
                self.future.set_exception(error)
            except concurrent.futures.InvalidStateError:
                pass


@define(eq=False)
class Batch:
    """The rows decoding together, their KV cache, attention mask, the logits of their
    next token, and how many tokens each row has in the cache."""

    rows: list[SequenceState]
    cache: Any
    mask: torch.Tensor
    logits: torch.Tensor
    lengths: list[int]


@define(eq=False)
class SequenceState:
    """One sample being generated: where it came from, and what it produced so far."""

    owner: PendingRequest
    index: int
    params: SamplingParams
    prompt_ids: tuple[int, ...]
    generator: Any = None
    token_ids: list[int] = field(factory=list)
    logprobs: list[float] = field(factory=list)
    top_logprobs: list[tuple[float, ...]] = field(factory=list)
    text: str = ""
    finish: FinishReason | None = None
    cached_tokens: int = 0
    """Prompt tokens this sample did not encode (set when it is admitted)."""
    hidden: list[torch.Tensor] = field(factory=list)
    """``[layers, hidden]`` per generated token that ran through the model, when
    ``params.hidden_layers`` asks for them."""

    @property
    def draining(self) -> bool:
        """Finished, but its last token has not run through the model yet, and its state
        was asked for: the row stays for one more decode pass that only reads states."""
        return self.finish is not None and bool(self.params.hidden_layers) and len(self.hidden) < len(self.token_ids)

    def completion(self, finish: FinishReason | None = None) -> Completion:
        """The sample as a completion: finished, or so far (``finish`` given)."""
        finish = finish or self.finish
        assert finish is not None
        hidden = None
        if self.hidden and len(self.hidden) == len(self.token_ids):
            import torch

            hidden = torch.stack(self.hidden)
        return Completion(
            text=self.text,
            token_ids=self.token_ids,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs,
            finish_reason=finish,
            prompt_tokens=len(self.prompt_ids),
            cached_tokens=self.cached_tokens,
            hidden=hidden,
        )
