"""The embedded policy backend: a transformers causal LM, CPU or GPU, in-process, with a
continuous-batching decode loop.

The loop is written over the model's forward pass (not ``model.generate``), because the
runtime needs what ``generate`` does not give together: per-request stop strings,
temperature, top-p, seed and logprobs in one batch, per-sequence reproducible sampling,
sequences that leave and join the batch between decode steps, and KV caches reused
across requests.

One worker thread runs the loop. Each step it (1) admits waiting sequences into free
rows: their prompts are prefilled (distinct prompts once, cached prefixes reused) and
stacked onto the running batch; (2) picks one token for every row; (3) retires finished
rows, resolving a request when all its ``n`` samples are done; (4) runs one decode
forward pass over the rest. So a tree search's stragglers never hold the engine: other
requests fill the rows they leave.

Layout of the batch: rows are left-padded, with an explicit attention mask and position
ids, so each row's keys carry the same rotary positions whatever else is in the batch;
sampling uses a per-sample seeded generator, so a seeded request gets the same samples
alone or under load. Prefix reuse: the KV cache of every finished sequence (prompt +
generated tokens) goes into a bounded LRU keyed by token ids; a later prompt that shares
a prefix with an entry (the next step of the same path, another sample of the same
prompt) only encodes the tokens after the longest shared prefix.

Options (``config.options``): ``max_batch`` (rows decoded together), ``admit_min`` (while
rows decode, newcomers join once this many rows are free, or all of them fit: each
admission costs a forward pass of its own; default a quarter of ``max_batch``),
``prefix_cache_tokens``
(KV cache budget in tokens, 0 disables reuse), ``threads`` (torch CPU threads for this
process; on a busy machine fewer threads than cores avoids OpenMP oversubscription, which
can slow decoding several times), ``continuous`` (false: the lockstep way, for
comparisons: the runtime sends whole ``generate`` calls, and a batch runs until its last
row is done before the next starts).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from attrs import define, field

from reason.components import Backend
from reason.engine import EngineStats
from reason.errors import BackendError
from reason.events import EngineStep
from reason.log import get_logger
from reason.options import Option
from reason.types import Completion, FinishReason, GenerateRequest, SamplingParams, sample_seed

from . import models
from .models import prompt_ids

if TYPE_CHECKING:
    import torch

    from reason.config import Config

log = get_logger()

DEFAULT_MAX_BATCH_CPU = 16
DEFAULT_MAX_BATCH_GPU = 64
DEFAULT_PREFIX_CACHE_TOKENS = 32768
"""Enough for the live paths of a few dozen concurrent searches on a small model
(SmolLM2-135M: 46 KB of float32 keys and values per token, so about 1.5 GB)."""


@define
class BackendStats(EngineStats):
    """:class:`EngineStats` plus what the decode loop spent its time on."""

    forward_passes: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0


class PrefixCache:
    """An LRU of per-sequence KV caches keyed by the token ids they encode.

    Each entry holds, per layer, ``(keys, values)`` of shape ``[heads, length, head_dim]``.
    ``lookup`` returns the longest common prefix with any entry (any prefix of an entry is
    usable: keys of token ``i`` depend only on tokens ``0..i``). Entries whose ids are a
    prefix of a newer entry are dropped as redundant. The total is bounded in tokens.
    """

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.tokens = 0
        self._entries: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: Sequence[int]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """The longest cached prefix of ``ids``: ``(length, per-layer kv)`` (kv may be longer)."""
        best, best_key = 0, None
        ids = tuple(ids)
        for key in self._entries:
            if not key or key[0] != ids[0] or len(key) <= best:  # cannot beat the best so far
                continue
            n = _common_prefix(key, ids)
            if n > best:
                best, best_key = n, key
        if best_key is None:
            return 0, None
        self._entries.move_to_end(best_key)
        return best, self._entries[best_key]

    def insert(self, ids: Sequence[int], kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        ids = tuple(ids)
        if not ids or len(ids) > self.max_tokens:
            return
        for key in list(self._entries):
            if len(key) >= len(ids) and key[: len(ids)] == ids:
                self._entries.move_to_end(key)  # already covered by a longer entry
                return
            if len(key) < len(ids) and ids[: len(key)] == key:
                self._drop(key)
        self._entries[ids] = kv
        self.tokens += len(ids)
        while self.tokens > self.max_tokens and self._entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[int, ...]) -> None:
        del self._entries[key]
        self.tokens -= len(key)

    def clear(self) -> None:
        self._entries.clear()
        self.tokens = 0


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


@define(eq=False)
class _Request:
    """A submitted request: its future resolves when all its sequences are done."""

    request: GenerateRequest
    future: concurrent.futures.Future[list[Completion]]
    on_text: Callable[[int, str], None] | None = None
    sequences: list[_Sequence] | None = None
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
class _Batch:
    """The rows decoding together, their KV cache, attention mask, the logits of their
    next token, and how many tokens each row has in the cache."""

    rows: list[_Sequence]
    cache: Any
    mask: torch.Tensor
    logits: torch.Tensor
    lengths: list[int]


@define(eq=False)
class _Sequence:
    """One sample being generated: where it came from, and what it produced so far."""

    owner: _Request
    index: int
    params: SamplingParams
    prompt_ids: tuple[int, ...]
    generator: Any = None
    token_ids: list[int] = field(factory=list)
    logprobs: list[float] = field(factory=list)
    top_logprobs: list[tuple[float, ...]] = field(factory=list)
    text: str = ""
    finish: FinishReason | None = None

    def completion(self) -> Completion:
        assert self.finish is not None
        return Completion(
            text=self.text,
            token_ids=self.token_ids,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs,
            finish_reason=self.finish,
            prompt_tokens=len(self.prompt_ids),
        )


class TransformersBackend(Backend):
    """Batched generation with a transformers causal LM (see the module docstring)."""

    options = (
        Option("max_batch", int, None, minimum=1, help=f"rows decoded together [{DEFAULT_MAX_BATCH_CPU} on CPU, {DEFAULT_MAX_BATCH_GPU} on GPU]"),
        Option("admit_min", int, None, minimum=1, help="free rows before newcomers join a running batch [max_batch/4]"),
        Option("prefix_cache_tokens", int, DEFAULT_PREFIX_CACHE_TOKENS, minimum=0, help="KV cache budget for prefix reuse (0: off)"),
        Option("threads", int, None, minimum=1, help="torch CPU threads (fewer than cores on a busy machine) [torch's]"),
        Option("continuous", bool, True, help="false: lockstep batches, for comparisons"),
    )

    def __init__(self, config: Config, arg: str | None = None) -> None:
        super().__init__(config, arg)
        self.spec = config.model or arg
        self.source = models.resolve_model(self.spec)  # fails fast on a missing path
        self.max_batch = self.option("max_batch")
        self.prefix_cache = PrefixCache(self.option("prefix_cache_tokens"))
        self.threads = self.option("threads")
        self._continuous = self.option("continuous")
        self.admit_min = self.option("admit_min")
        self.stats = BackendStats()
        self._lock = threading.Lock()
        self._rng = random.Random()
        # the decode loop's inbox; the rest of its state is touched by its thread only
        self._wake = threading.Condition()
        self._arrivals: list[_Request] = []
        self._ready: deque[_Sequence] = deque()
        self._admitting: list[_Sequence] = []
        self._worker: threading.Thread | None = None
        self._closed = False
        self.rows_in_flight = 0
        """Rows in the decode batch after the last step (for tests and monitoring)."""
        self._model: Any = None
        self._tokenizer: Any = None

    # -- model ------------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.source.name

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = models.load_tokenizer(self.source)
        return self._tokenizer

    @property
    def model(self) -> Any:
        with self._lock:
            if self._model is None:
                model = models.load_model(self.source, self.config.device, self.config.dtype)
                self._model = model
                self._setup()
            return self._model

    def load(self) -> None:
        self.model

    def _setup(self) -> None:
        import torch
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        if self.threads is not None:
            torch.set_num_threads(self.threads)
        model, tokenizer = self._model, self.tokenizer
        self.device = model.device
        eos: set[int] = set()
        for source in (model.generation_config.eos_token_id, model.config.eos_token_id, tokenizer.eos_token_id):
            if isinstance(source, int):
                eos.add(source)
            elif source:
                eos.update(int(t) for t in source)
        self.eos_ids = frozenset(eos)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (min(eos) if eos else 0))
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        # Reusing and trimming caches assumes plain full-attention layers (no sliding
        # window, no recurrent state); other architectures still batch, without reuse.
        probe = DynamicCache(config=model.config)
        self.plain_cache = all(type(layer) is DynamicLayer for layer in probe.layers)
        if self.max_batch is None:
            self.max_batch = DEFAULT_MAX_BATCH_GPU if self.device.type == "cuda" else DEFAULT_MAX_BATCH_CPU
        if self.admit_min is None:
            # measured (beam N=8, 16 problems, 2-core CPU): 4 of 16 rows cut the prefill
            # time from 21% to 8% of the run and raised tok/s by 13% at the same results
            self.admit_min = max(1, self.max_batch // 4)

    def close(self) -> None:
        """Stop the decode loop (requests still running fail) and free the model."""
        with self._wake:
            self._closed = True
            self._wake.notify()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=60)
        self.prefix_cache.clear()
        self._model = None

    def reset_stats(self) -> None:
        self.stats = BackendStats()

    # -- prompts ----------------------------------------------------------------------

    def format_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        tokenizer = self.tokenizer
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        # A base model without a chat template: plain text, the reply follows.
        return "".join(f"{m['content']}\n\n" for m in messages)

    def encode(self, prompt: str) -> list[int]:
        return prompt_ids(self.tokenizer, prompt)

    # -- the engine -------------------------------------------------------------------

    @property
    def continuous(self) -> bool:
        return self._continuous

    streams_text = True

    async def generate_async(
        self, request: GenerateRequest, on_text: Callable[[int, str], None] | None = None
    ) -> list[Completion]:
        return await asyncio.wrap_future(self.submit(request, on_text))

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
        """Blocking: the requests arrive together, so they are admitted together."""
        futures = self._enqueue([_Request(request, concurrent.futures.Future()) for request in requests])
        return [future.result() for future in futures]

    def submit(
        self, request: GenerateRequest, on_text: Callable[[int, str], None] | None = None
    ) -> concurrent.futures.Future[list[Completion]]:
        """Queue ``request`` for the decode loop; the future resolves when its ``n``
        samples are done. Cancelling the future drops its sequences from the batch.
        ``on_text(sample, text_so_far)`` is called from the loop's thread after each token."""
        (future,) = self._enqueue([_Request(request, concurrent.futures.Future(), on_text)])
        return future

    def _enqueue(self, pending: list[_Request]) -> list[concurrent.futures.Future[list[Completion]]]:
        with self._wake:
            if self._closed:
                raise BackendError("the transformers backend is closed")
            self._arrivals.extend(pending)
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="reason-transformers", daemon=True)
                self._worker.start()
            self._wake.notify()
            self.stats.requests += len(pending)
        return [p.future for p in pending]

    def _serve(self) -> None:
        """The decode loop (one thread): admit waiting sequences into free rows, pick one
        token for every row, retire finished rows, decode one step; sleep when idle."""
        import torch

        batch: _Batch | None = None
        while True:
            with self._wake:
                while not self._closed and not self._arrivals and not self._ready and batch is None:
                    self._wake.wait()
                if self._closed:
                    break
                arrivals, self._arrivals = self._arrivals, []
            try:
                with torch.inference_mode():
                    self.load()
                    for pending in arrivals:
                        self._expand(pending)
                    batch = self._iterate(batch)
                    self.rows_in_flight = len(batch.rows) if batch else 0
            except Exception as exc:  # a failed forward pass fails what it was computing
                log.warning("transformers backend: decode step failed", error=str(exc))
                failed = [s.owner for s in (batch.rows if batch else [])] + [s.owner for s in self._ready]
                failed += [s.owner for s in self._admitting]  # taken off _ready, not yet in a batch
                failed += [p for p in arrivals if p.sequences is None]
                for pending in {id(p): p for p in failed}.values():
                    pending.fail(exc)
                batch, self._ready, self._admitting = None, deque(), []
                self.rows_in_flight = 0
        error = BackendError("the transformers backend was closed")
        for pending in [*self._arrivals, *(s.owner for s in self._ready), *(s.owner for s in (batch.rows if batch else []))]:
            pending.fail(error)

    def _expand(self, pending: _Request) -> None:
        """Encode a new request and queue its ``n`` sequences for admission."""
        request = pending.request
        if pending.future.cancelled():  # its caller gave up before it was even encoded
            self.stats.cancelled += request.n
            return
        try:
            pending.sequences = self._sequences(request, pending)
        except Exception as exc:  # a bad request fails alone
            pending.fail(exc)
            return
        self._ready.extend(pending.sequences)

    def _sequences(self, request: GenerateRequest, owner: _Request) -> list[_Sequence]:
        import torch

        ids = tuple(self.encode(request.prompt))
        if len(ids) >= self.max_positions:
            raise BackendError(f"the prompt has {len(ids)} tokens; {self.model_name} takes at most {self.max_positions}")
        seed = request.params.seed
        if seed is None:
            seed = self._rng.getrandbits(63)
        sequences = []
        for i in range(request.n):
            generator = None
            if request.params.temperature > 0:
                generator = torch.Generator(device=self.device)
                generator.manual_seed(sample_seed(seed, i))
            sequences.append(_Sequence(owner=owner, index=i, params=request.params, prompt_ids=ids, generator=generator))
        self.stats.sequences += len(sequences)
        return sequences

    def _iterate(self, batch: _Batch | None) -> _Batch | None:
        """One engine step. Returns the batch that decodes on (None when empty)."""
        start = time.perf_counter()
        if batch is not None:
            batch = self._drop_cancelled(batch)
        if any(seq.owner.future.cancelled() for seq in self._ready):
            waiting = len(self._ready)
            self._ready = deque(seq for seq in self._ready if not seq.owner.future.cancelled())
            self.stats.cancelled += waiting - len(self._ready)
        free = self.max_batch - (len(batch.rows) if batch else 0)
        # Rows join a running batch only with plain caches (others cannot be merged) and
        # when batching continuously; otherwise a new batch starts when the old is done
        # (static batching, as the lockstep runtime did).
        # Each admission is a forward pass of its own (the newcomers' prefill): while rows
        # decode, wait until admit_min rows are free (or every waiting one fits) so that
        # one prefill serves several newcomers.
        enough = batch is None or free >= min(self.admit_min, len(self._ready))
        if self._ready and free > 0 and enough and (batch is None or (self.plain_cache and self._continuous)):
            newcomers = [self._ready.popleft() for _ in range(min(free, len(self._ready)))]
            self._admitting = newcomers
            prefilled = self.stats.prefill_tokens, self.stats.reused_tokens
            batch = self._admit(batch, newcomers)
            admitted = len(newcomers)
            prefill = self.stats.prefill_tokens - prefilled[0]
            reused = self.stats.reused_tokens - prefilled[1]
        else:
            admitted = prefill = reused = 0
        if batch is None:
            return None
        tokens = self._pick(batch.rows, batch.logits)
        picked = len(tokens)
        batch = self._retire(batch, tokens)
        if batch is not None:
            self._decode(batch, tokens)
        self._admitting = []
        self.emit(
            EngineStep(
                engine="transformers",
                running=picked,
                max_batch=self.max_batch,
                waiting=len(self._ready) + len(self._arrivals),
                admitted=admitted,
                prefill_tokens=prefill,
                reused_tokens=reused,
                decode_tokens=picked,
                seconds=time.perf_counter() - start,
            )
        )
        return batch

    def _admit(self, batch: _Batch | None, newcomers: list[_Sequence]) -> _Batch:
        """Prefill the newcomers (distinct prompts once, reusing cached prefixes) and
        join them to the running batch: both are left-padded to one width and stacked."""
        import torch
        import torch.nn.functional as F

        start = time.perf_counter()
        prompts: dict[tuple[int, ...], int] = {}
        for seq in newcomers:
            prompts.setdefault(seq.prompt_ids, len(prompts))
        cache, mask, logits = self._prefill(list(prompts))
        if len(prompts) != len(newcomers):  # samples of one prompt share its prefill
            rows = torch.tensor([prompts[s.prompt_ids] for s in newcomers], device=self.device)
            for layer in cache.layers:
                layer.batch_select_indices(rows)
            mask, logits = mask[rows], logits[rows]
        lengths = [len(s.prompt_ids) for s in newcomers]
        if batch is None:
            joined = _Batch(rows=newcomers, cache=cache, mask=mask, logits=logits, lengths=lengths)
        else:
            width = max(batch.mask.shape[1], mask.shape[1])
            for old, new in zip(batch.cache.layers, cache.layers):
                old.keys = torch.cat([_pad_left(old.keys, width), _pad_left(new.keys, width)])
                old.values = torch.cat([_pad_left(old.values, width), _pad_left(new.values, width)])
            joined = _Batch(
                rows=batch.rows + newcomers,
                cache=batch.cache,
                mask=torch.cat([F.pad(batch.mask, (width - batch.mask.shape[1], 0)), F.pad(mask, (width - mask.shape[1], 0))]),
                logits=torch.cat([batch.logits, logits]),
                lengths=batch.lengths + lengths,
            )
        self.stats.prefill_seconds += time.perf_counter() - start
        return joined

    def _retire(self, batch: _Batch, tokens: list[int]) -> _Batch | None:
        """Take finished rows out of the batch (their keys and values go to the prefix
        cache) and resolve every request whose samples are all done."""
        done = [i for i, seq in enumerate(batch.rows) if seq.finish is not None]
        if not done:
            return batch
        width = batch.mask.shape[1]
        for i in done:
            seq = batch.rows[i]
            self._remember(seq, batch.cache, i, batch.lengths[i], width)
            seq.owner.sample_done()
        keep = [i for i, seq in enumerate(batch.rows) if seq.finish is None]
        tokens[:] = [tokens[i] for i in keep]
        return self._select(batch, keep)

    def _drop_cancelled(self, batch: _Batch) -> _Batch | None:
        keep = [i for i, seq in enumerate(batch.rows) if not seq.owner.future.cancelled()]
        if len(keep) == len(batch.rows):
            return batch
        self.stats.cancelled += len(batch.rows) - len(keep)
        return self._select(batch, keep)

    def _select(self, batch: _Batch, keep: list[int]) -> _Batch | None:
        import torch

        if not keep:
            return None
        if len(keep) == len(batch.rows):
            return batch
        index = torch.tensor(keep, device=self.device)
        for layer in batch.cache.layers:
            layer.batch_select_indices(index)
        batch = _Batch(
            rows=[batch.rows[i] for i in keep],
            cache=batch.cache,
            mask=batch.mask[index],
            logits=batch.logits[index],
            lengths=[batch.lengths[i] for i in keep],
        )
        batch.mask = self._trim(batch.cache, batch.mask)
        return batch

    def _decode(self, batch: _Batch, tokens: list[int]) -> None:
        """One forward pass over every row: feed each row its picked token."""
        import torch

        start = time.perf_counter()
        rows = len(batch.rows)
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((rows, 1))], dim=1)
        out = self._model(
            input_ids=torch.tensor([[t] for t in tokens], device=self.device),
            attention_mask=batch.mask,
            position_ids=torch.tensor([[n] for n in batch.lengths], device=self.device),
            past_key_values=batch.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        batch.logits = out.logits[:, -1, :]
        batch.lengths = [n + 1 for n in batch.lengths]
        self.stats.forward_passes += 1
        self.stats.decode_steps += 1
        self.stats.decode_rows += rows
        if self._ready or self._arrivals:
            self.stats.waiting_steps += 1
            self.stats.waiting_rows += rows
        self.stats.decode_seconds += time.perf_counter() - start

    def _prefill(self, prompts: list[tuple[int, ...]]) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """Encode the distinct prompts of a chunk in one forward pass, reusing cached
        prefixes. Returns the batch's cache, attention mask and last-position logits.

        Layout: row ``u`` (prompt length ``T_u``) is left-padded to the longest prompt
        ``T``. The forward pass encodes the last ``S`` columns, where ``S`` is the longest
        uncached suffix; everything before them comes from the prefix cache. A row whose
        cached prefix is longer than ``T_u - S`` simply recomputes a few cached tokens:
        they cost nothing extra, as the batch computes ``S`` columns for every row anyway.
        """
        import torch
        from transformers import DynamicCache

        model = self._model
        hits = []
        for ids in prompts:
            cached, kv = self.prefix_cache.lookup(ids) if self._reuse else (0, None)
            hits.append((min(cached, len(ids) - 1), kv))  # the last token must run: we need its logits
        total = max(len(ids) for ids in prompts)
        suffix = max(len(ids) - cached for ids, (cached, _) in zip(prompts, hits))
        past = total - suffix
        rows = len(prompts)
        if past > 0:
            # the longest prompt reuses a prefix (suffix < its length), so some hit has kv
            reference = next(kv for _, kv in hits if kv is not None)
            layers = []
            for layer, (ref_keys, _) in enumerate(reference):
                heads, _, dim = ref_keys.shape
                keys = ref_keys.new_zeros((rows, heads, past, dim))
                values = ref_keys.new_zeros((rows, heads, past, dim))
                for u, (ids, (_, kv)) in enumerate(zip(prompts, hits)):
                    used = len(ids) - suffix  # cached tokens left of the encoded columns
                    if used > 0:
                        keys[u, :, past - used :] = kv[layer][0][:, :used]
                        values[u, :, past - used :] = kv[layer][1][:, :used]
                layers.append((keys, values))
            cache = DynamicCache(layers, config=model.config)
        else:
            cache = DynamicCache(config=model.config)
        input_ids = torch.full((rows, suffix), self.pad_id, dtype=torch.long)
        positions = torch.zeros((rows, suffix), dtype=torch.long)
        mask = torch.zeros((rows, total), dtype=torch.long)
        for u, ids in enumerate(prompts):
            first = max(0, len(ids) - suffix)
            width = len(ids) - first
            input_ids[u, suffix - width :] = torch.tensor(ids[first:])
            positions[u, suffix - width :] = torch.arange(first, len(ids))
            mask[u, total - len(ids) :] = 1
            self.stats.prefill_tokens += width
            self.stats.reused_tokens += first
        mask = mask.to(self.device)
        out = model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask,
            position_ids=positions.to(self.device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.stats.forward_passes += 1
        return out.past_key_values, mask, out.logits[:, -1, :]

    @property
    def _reuse(self) -> bool:
        return self.plain_cache and self.prefix_cache.max_tokens > 0

    def _pick(self, active: list[_Sequence], logits: torch.Tensor) -> list[int]:
        """Choose each row's next token, record its logprobs, and settle finished rows."""
        import torch

        logits = logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        k = max(seq.params.logprobs for seq in active)
        top_values = logprobs.topk(k, dim=-1).values.tolist() if k else None
        greedy = logits.argmax(dim=-1).tolist()
        tokens = []
        for i, seq in enumerate(active):
            params = seq.params
            if params.temperature == 0:
                token = greedy[i]
            else:
                token = _sample(logits[i], params.temperature, params.top_p, seq.generator)
            tokens.append(token)
            seq.token_ids.append(token)
            seq.logprobs.append(float(logprobs[i, token]))
            seq.top_logprobs.append(tuple(top_values[i][: params.logprobs]) if top_values else ())
            self._settle(seq, len(seq.prompt_ids) + len(seq.token_ids))
            if seq.owner.on_text is not None:
                text = seq.text if seq.finish else self._tokenizer.decode(seq.token_ids, skip_special_tokens=True)
                try:
                    seq.owner.on_text(seq.index, text)
                except Exception as exc:  # a listener gone (its loop closed) must not fail the batch
                    log.debug("on_text failed", error=str(exc))
        self.stats.decode_tokens += len(active)
        return tokens

    def _settle(self, seq: _Sequence, total: int) -> None:
        """Set ``seq.finish`` (and cut its text at a stop string) when it is done."""
        params = seq.params
        if seq.token_ids[-1] in self.eos_ids:
            seq.finish = "eos"
        elif params.stop:
            before = len(seq.text)
            seq.text = self._tokenizer.decode(seq.token_ids, skip_special_tokens=True)
            # Earlier text had no stop string; look only where a new one can end. A few
            # characters of slack cover a previous token that decoded incompletely.
            ends = []
            for stop in params.stop:
                at = seq.text.find(stop, max(0, before - len(stop) - 4))
                if at >= 0:
                    ends.append(at + len(stop))
            if ends:
                seq.text = seq.text[: min(ends)]
                seq.finish = "stop"
                return
        if seq.finish is None and (len(seq.token_ids) >= params.max_tokens or total >= self.max_positions):
            seq.finish = "length"
        if seq.finish is not None and seq.finish != "stop":
            seq.text = self._tokenizer.decode(seq.token_ids, skip_special_tokens=True)

    def _remember(self, seq: _Sequence, cache: Any, row: int, length: int, width: int) -> None:
        """Put a finished row's keys and values (prompt + generated tokens that ran
        through the model) into the prefix cache."""
        if not self._reuse:
            return
        ids = (seq.prompt_ids + tuple(seq.token_ids))[:length]
        kv = [
            (layer.keys[row, :, width - length :].clone(), layer.values[row, :, width - length :].clone())
            for layer in cache.layers
        ]
        self.prefix_cache.insert(ids, kv)

    def _trim(self, cache: Any, mask: torch.Tensor) -> torch.Tensor:
        """Drop leading columns that are padding in every remaining row."""
        if not self.plain_cache:
            return mask
        used = mask.any(dim=0).nonzero()
        first = int(used[0]) if len(used) else 0
        if first == 0:
            return mask
        for layer in cache.layers:
            layer.keys = layer.keys[:, :, first:]
            layer.values = layer.values[:, :, first:]
        return mask[:, first:]


def _pad_left(kv: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad ``[rows, heads, length, dim]`` keys or values with zeros to ``width``."""
    import torch.nn.functional as F

    missing = width - kv.shape[2]
    return F.pad(kv, (0, 0, missing, 0)) if missing else kv


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator: Any) -> int:
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
