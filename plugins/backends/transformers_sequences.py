"""What the transformers backend's decode loop (:mod:`.transformers_loop`) works on: a
submitted request, each of its samples, the batch of rows decoding together, the loaded
model it runs, and its counters."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from attrs import define, field, frozen

from reason.engine import EngineStats
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

    def stack(self, newcomers: Batch) -> Batch:
        """``newcomers`` under this batch's rows (its cache takes theirs): both left-padded
        to one width."""
        import torch
        import torch.nn.functional as F

        from . import kv

        width = max(self.mask.shape[1], newcomers.mask.shape[1])
        for old, new in zip(self.cache.layers, newcomers.cache.layers):
            old.keys = torch.cat([kv.pad_left(old.keys, width), kv.pad_left(new.keys, width)])
            old.values = torch.cat([kv.pad_left(old.values, width), kv.pad_left(new.values, width)])
        return Batch(
            rows=self.rows + newcomers.rows,
            cache=self.cache,
            mask=torch.cat([F.pad(m, (width - m.shape[1], 0)) for m in (self.mask, newcomers.mask)]),
            logits=torch.cat([self.logits, newcomers.logits]),
            lengths=self.lengths + newcomers.lengths,
        )

    def keep_states(self, states: tuple[torch.Tensor, ...], wanted: set[tuple[int, ...]]) -> None:
        """Give every row that asked for them the states of the token it was just fed (the
        last one it picked) at its layers, out of a decode pass's ``states``: the pass
        computed them anyway."""
        import torch

        for layers in wanted:
            stacked = torch.stack([states[k][:, -1] for k in layers], dim=1)  # [rows, layers, hidden]
            for i, seq in enumerate(self.rows):
                if seq.params.hidden_layers == layers and seq.feed is None:  # a fed prompt token is not generated
                    seq.hidden.append(stacked[i].clone())  # a copy: a view would keep the whole batch's states alive

    def select(self, keep: list[int], trim: bool) -> Batch | None:
        """The rows ``keep`` (None when none is left); ``trim`` also drops the leading
        columns that are padding in every row left (plain caches only)."""
        import torch

        from . import kv

        if not keep:
            return None
        batch = self  # all kept: rows may have been replaced in place, and their padding may go
        if len(keep) != len(self.rows):
            index = torch.tensor(keep, device=self.mask.device)
            for layer in self.cache.layers:
                layer.batch_select_indices(index)
            batch = Batch(
                rows=[self.rows[i] for i in keep],
                cache=self.cache,
                mask=self.mask[index],
                logits=self.logits[index],
                lengths=[self.lengths[i] for i in keep],
            )
        if trim:
            batch.mask = kv.trim_padding(batch.cache, batch.mask)
        return batch


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
    feed: int | None = None
    """The prompt's last token, while the row that joined without a pass of its own has
    not fed it yet (see :mod:`.transformers_admission`): the next decode pass runs it and
    gives the row its first logits."""

    @property
    def draining(self) -> bool:
        """Finished, but its last token has not run through the model yet, and its state
        was asked for: the row stays for one more decode pass that only reads states."""
        return self.finish is not None and bool(self.params.hidden_layers) and len(self.hidden) < len(self.token_ids)

    def settle(self, eos_ids: Collection[int], decode: Callable[[list[int]], str], max_positions: int) -> None:
        """Set ``finish`` (and cut the text at a stop string) when the last token ended
        the sample: an end-of-sequence token, a stop string, its budget or the model's
        context (``max_positions``)."""
        params = self.params
        if self.token_ids[-1] in eos_ids:
            self.finish = "eos"
        elif params.stop:
            before = len(self.text)
            self.text = decode(self.token_ids)
            # Earlier text had no stop string; look only where a new one can end. A few
            # characters of slack cover a previous token that decoded incompletely.
            ends = []
            for stop in params.stop:
                at = self.text.find(stop, max(0, before - len(stop) - 4))
                if at >= 0:
                    ends.append(at + len(stop))
            if ends:
                self.text = self.text[: min(ends)]
                self.finish = "stop"
                return
        total = len(self.prompt_ids) + len(self.token_ids)
        if self.finish is None and (len(self.token_ids) >= params.max_tokens or total >= max_positions):
            self.finish = "length"
        if self.finish is not None and self.finish != "stop":
            self.text = decode(self.token_ids)

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


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: Any) -> int:
    """Draw a token from ``logits`` at ``temperature``, within the ``top_p`` nucleus."""
    import torch

    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # keep the smallest set whose mass reaches top_p (always at least the top token)
        keep = (sorted_probs.cumsum(-1) - sorted_probs) < top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


@define
class BackendStats(EngineStats):
    """:class:`EngineStats` plus what the decode loop spent its time on."""

    forward_passes: int = 0
    joined_rows: int = 0
    """Sequences that joined the batch without a pass of their own (their prompt was
    cached but for its last token, which ran in a decode pass)."""
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0


@frozen
class LoadedModel:
    """What the decode loop needs of a loaded model; the backend makes it once the
    weights are in memory."""

    model: Any
    tokenizer: Any
    name: str
    device: Any
    eos_ids: frozenset[int]
    pad_id: int
    max_positions: int
    plain_cache: bool
    """Whether the layers' caches can be trimmed, merged and reused (plain full attention)."""
    max_batch: int
    admit_min: int
    """While rows decode, newcomers join once this many rows are free (or all of them fit)."""
