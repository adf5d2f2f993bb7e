"""The transformers backend's continuous-batching decode loop, written over the model's
forward pass (see :mod:`.transformers` for why not ``model.generate``).

One worker thread runs the loop. Each step it (1) admits waiting sequences into free
rows (:mod:`.transformers_admission`: prefilled, or joined without a pass of their own
where only a prompt's last token is new); (2) picks one token for every row; (3) retires
finished rows, resolving a request when all its ``n`` samples are done, and puts waiting
sequences that can join into their places; (4) runs one decode forward pass over the
rest. So a tree search's stragglers never hold the engine: other requests fill the rows
they leave.

Layout of the batch: rows are left-padded, with an explicit attention mask and position
ids, so each row's keys carry the same rotary positions whatever else is in the batch;
sampling uses a per-sample seeded generator, so a seeded request gets the same samples
alone or under load. Prefix reuse: the KV cache of every finished sequence (prompt +
generated tokens) goes into a bounded LRU keyed by token ids (:class:`.kv.PrefixCache`);
a later prompt that shares a prefix with an entry (the next step of the same path,
another sample of the same prompt) only encodes the tokens after the longest shared prefix.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import itertools
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from reason.errors import BackendError
from reason.events import EngineStep
from reason.log import get_logger
from reason.types import Completion, GenerateRequest, Watch, sample_seed

from . import kv
from .kv import PrefixCache, with_cache
from .models import request_ids
from .transformers_admission import Admission
from .transformers_sequences import BackendStats, Batch, LoadedModel, PendingRequest, SequenceState, sample_token

if TYPE_CHECKING:
    import torch

log = get_logger()


class DecodeLoop:
    """The continuous-batching engine the transformers backend owns: one worker thread,
    started by the first request, that loads the model (``load``) and then serves every
    request :meth:`enqueue` hands it (see the module docstring)."""

    loaded: LoadedModel
    """The model, once the worker loaded it."""
    admission: Admission
    """How sequences enter the batch (made with :attr:`loaded`)."""

    def __init__(
        self,
        load: Callable[[], LoadedModel],
        prefix_cache: PrefixCache[kv.KV],
        emit: Callable[[Any], None],
        continuous: bool = True,
    ) -> None:
        """``load`` is called on the worker thread before the first step; ``emit`` gets an
        :class:`EngineStep` after each step; ``continuous`` False runs lockstep batches
        (a new batch only once the last one is done), for comparisons."""
        self._load, self.prefix_cache, self._emit, self.continuous = load, prefix_cache, emit, continuous
        self.stats = BackendStats()
        self._rng = random.Random()
        # the decode loop's inbox; the rest of its state is touched by its thread only
        self._wake = threading.Condition()
        self._arrivals: list[PendingRequest] = []
        self._ready: deque[SequenceState] = deque()
        self._admitting: list[SequenceState] = []
        self._worker: threading.Thread | None = None
        self._open: set[PendingRequest] = set()
        """Requests not resolved yet, wherever they are in the loop: what fails if it stops."""
        self._closed = False
        self._stopped = False
        self.rows_in_flight = 0
        """Rows in the decode batch after the last step (for tests and monitoring)."""

    @property
    def failure(self) -> str | None:
        """The decode loop broken (its thread ended) while the backend is open (a failed
        step fails only the requests it held, and the loop goes on: that is not a failure
        of the backend)."""
        worker = self._worker
        stopped = self._stopped or (worker is not None and not worker.is_alive())
        return "the transformers decode loop stopped" if stopped and not self._closed else None

    def close(self) -> None:
        """Stop the decode loop: requests still running fail."""
        with self._wake:
            self._closed = True
            self._wake.notify()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=60)

    def _closed_request(self, pending: PendingRequest, _future: concurrent.futures.Future[list[Completion]]) -> None:
        self._open.discard(pending)

    def enqueue(self, pending: list[PendingRequest]) -> list[concurrent.futures.Future[list[Completion]]]:
        with self._wake:
            if self._closed:
                raise BackendError("the transformers backend is closed")
            self._arrivals.extend(pending)
            for p in pending:
                self._open.add(p)
                p.future.add_done_callback(functools.partial(self._closed_request, p))
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="reason-transformers", daemon=True)
                self._worker.start()
            self._wake.notify()
            self.stats.requests += len(pending)
        return [p.future for p in pending]

    def _serve(self) -> None:
        """The decode loop (one thread): admit waiting sequences into free rows, pick one
        token for every row, retire finished rows, decode one step; sleep when idle."""
        try:
            import torch  # inside the guard: even this failing must fail the requests

            self._serve_until_closed(torch)
            error = BackendError("the transformers backend was closed")
        except BaseException as exc:  # the loop itself broke: nothing it held may wait forever
            error = BackendError(f"the transformers decode loop stopped: {type(exc).__name__}: {exc}")
            # said before its requests fail, not once the thread is gone: a caller woken by
            # that failure must already see the backend's failure
            self._stopped = True
            raise
        finally:
            for pending in list(self._open):
                pending.fail(error)

    def _serve_until_closed(self, torch: Any) -> None:
        batch: Batch | None = None
        while True:
            with self._wake:
                while not self._closed and not self._arrivals and not self._ready and batch is None:
                    self._wake.wait()
                if self._closed:
                    break
                arrivals, self._arrivals = self._arrivals, []
            try:
                with torch.inference_mode():
                    if not hasattr(self, "loaded"):
                        self.loaded = self._load()
                        self.admission = Admission(self.loaded, self.prefix_cache, self.stats)
                    for pending in arrivals:
                        self._expand(pending)
                    batch = self._iterate(batch)
                    self.rows_in_flight = len(batch.rows) if batch else 0
            except Exception as exc:  # a failed forward pass fails what it was computing
                failed = [s.owner for s in (batch.rows if batch else [])] + [s.owner for s in self._ready]
                failed += [s.owner for s in self._admitting]  # taken off _ready, not yet in a batch
                failed += [p for p in arrivals if p.sequences is None]
                error = BackendError(f"the transformers backend: a decode step failed: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                for pending in {id(p): p for p in failed}.values():
                    pending.fail(error)
                batch, self._ready, self._admitting = None, deque(), []
                self.rows_in_flight = 0
                # Logged last and guarded: the callers already have the error, and a broken
                # log sink must not end the loop that every later request waits on.
                with contextlib.suppress(Exception):
                    log.warning("transformers backend: decode step failed", error=str(exc))

    def _expand(self, pending: PendingRequest) -> None:
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

    def _sequences(self, request: GenerateRequest, owner: PendingRequest) -> list[SequenceState]:
        import torch

        ids = tuple(request_ids(self.loaded.tokenizer, request))
        if len(ids) >= self.loaded.max_positions:
            raise BackendError(f"the prompt has {len(ids)} tokens; {self.loaded.name} takes at most {self.loaded.max_positions}")
        layers = self.loaded.model.config.num_hidden_layers
        if request.params.hidden_layers and request.params.hidden_layers[-1] > layers:
            raise BackendError(
                f"hidden_layers asks for layer {request.params.hidden_layers[-1]}; {self.loaded.name} has {layers}"
            )
        seed = request.params.seed
        if seed is None:
            seed = self._rng.getrandbits(63)
        sequences = []
        for i in range(request.n):
            generator = None
            if request.params.temperature > 0:
                generator = torch.Generator(device=self.loaded.device)
                generator.manual_seed(sample_seed(seed, i))
            sequences.append(SequenceState(owner=owner, index=i, params=request.params, prompt_ids=ids, generator=generator))
        self.stats.sequences += len(sequences)
        return sequences

    def _iterate(self, batch: Batch | None) -> Batch | None:
        """One engine step. Returns the batch that decodes on (None when empty)."""
        start = time.perf_counter()
        if batch is not None:
            batch = self._drop_cancelled(batch)
        if any(seq.owner.future.cancelled() for seq in self._ready):
            waiting = len(self._ready)
            self._ready = deque(seq for seq in self._ready if not seq.owner.future.cancelled())
            self.stats.cancelled += waiting - len(self._ready)
        free = self.loaded.max_batch - (len(batch.rows) if batch else 0)
        # Rows join a running batch only with plain caches (others cannot be merged) and
        # when batching continuously; otherwise a new batch starts when the old is done
        # (static batching, as the lockstep runtime did).
        # A prefill is a forward pass of its own: while rows decode, wait until admit_min
        # rows are free (or every waiting one fits) so that one serves several newcomers.
        # Those whose prompt is cached but for its last token (the next step of a path)
        # need no pass of their own, so they join as soon as a row is free.
        joinable = batch is None or (self.loaded.plain_cache and self.continuous)
        count, hits = 0, None
        if self._ready and free > 0 and joinable:
            if batch is None or free >= min(self.loaded.admit_min, len(self._ready)):
                count = min(free, len(self._ready))
            else:
                hits = self._leading_joins(free)
                count = len(hits)
        before = self.stats.prefill_tokens, self.stats.reused_tokens
        if count:
            newcomers = [self._ready.popleft() for _ in range(count)]
            self._admitting = newcomers
            batch = self.admission.admit(batch, newcomers, hits)
        if batch is None:
            return None
        tokens = self._pick(batch.rows, batch.logits)
        picked = len(tokens)
        batch, placed = self._retire(batch, tokens)
        if batch is not None:
            self._decode(batch, tokens)
        self._admitting = []
        admitted = count + placed
        prefill, reused = self.stats.prefill_tokens - before[0], self.stats.reused_tokens - before[1]
        self._emit(
            EngineStep(
                engine="transformers",
                running=picked,
                max_batch=self.loaded.max_batch,
                waiting=len(self._ready) + len(self._arrivals),
                admitted=admitted,
                prefill_tokens=prefill,
                reused_tokens=reused,
                decode_tokens=picked,
                seconds=time.perf_counter() - start,
            )
        )
        return batch

    def _leading_joins(self, limit: int, width: int | None = None) -> list[tuple[int, kv.KV]]:
        """:meth:`.Admission.join_hits` of the first ``limit`` sequences of the queue."""
        return self.admission.join_hits(itertools.islice(self._ready, limit), width)

    def _retire(self, batch: Batch, tokens: list[int]) -> tuple[Batch | None, int]:
        """Take finished rows out of the batch (their keys and values go to the prefix
        cache) and resolve every request whose samples are all done. Sequences that can
        join without a pass take finished rows' places in place: taking a row out and
        stacking one on would each copy the whole batch. Returns the batch and how many
        took a place."""
        done = [i for i, seq in enumerate(batch.rows) if seq.finish is not None and not seq.draining]
        if not done:
            return batch, 0
        width = batch.mask.shape[1]
        for i in done:
            seq = batch.rows[i]
            self.admission.remember(seq, batch.cache, i, batch.lengths[i], width)
            seq.owner.sample_done()
        hits = self._leading_joins(len(done), width) if self.continuous else []
        for i, hit in zip(done, hits):
            seq = self._ready.popleft()
            self._admitting.append(seq)
            self.admission.place(batch, i, seq, hit)
            tokens[i] = seq.prompt_ids[-1]
        keep = [i for i, seq in enumerate(batch.rows) if seq.finish is None or seq.draining]
        tokens[:] = [tokens[i] for i in keep]
        return batch.select(keep, trim=self.loaded.plain_cache), len(hits)

    def _drop_cancelled(self, batch: Batch) -> Batch | None:
        keep = [i for i, seq in enumerate(batch.rows) if not seq.owner.future.cancelled()]
        if len(keep) == len(batch.rows):
            return batch
        self.stats.cancelled += len(batch.rows) - len(keep)
        return batch.select(keep, trim=self.loaded.plain_cache)

    def _decode(self, batch: Batch, tokens: list[int]) -> None:
        """One forward pass over every row: feed each row its picked token."""
        import torch

        start = time.perf_counter()
        rows = len(batch.rows)
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((rows, 1))], dim=1)
        wanted = {seq.params.hidden_layers for seq in batch.rows if seq.params.hidden_layers}
        out = self.loaded.model(
            input_ids=torch.tensor([[t] for t in tokens], device=self.loaded.device),
            attention_mask=batch.mask,
            position_ids=torch.tensor([[n] for n in batch.lengths], device=self.loaded.device),
            **with_cache(self.loaded.model, batch.cache),
            use_cache=True,
            logits_to_keep=1,
            output_hidden_states=bool(wanted),
        )
        if wanted:
            batch.keep_states(out.hidden_states, wanted)
        for seq in batch.rows:
            seq.feed = None  # fed: the row has its first logits now
        batch.logits = out.logits[:, -1, :]
        batch.lengths = [n + 1 for n in batch.lengths]
        self.stats.forward_passes += 1
        self.stats.decode_steps += 1
        self.stats.decode_rows += rows
        if self._ready or self._arrivals:
            self.stats.waiting_steps += 1
            self.stats.waiting_rows += rows
        self.stats.decode_seconds += time.perf_counter() - start

    def _pick(self, active: list[SequenceState], logits: torch.Tensor) -> list[int]:
        """Choose each row's next token, record its logprobs, and settle finished rows."""
        import torch

        logits = logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        k = max(seq.params.logprobs for seq in active)
        top_values = logprobs.topk(k, dim=-1).values.tolist() if k else None
        greedy = logits.argmax(dim=-1).tolist()
        tokens = []
        drained = 0
        for i, seq in enumerate(active):
            if seq.feed is not None:  # joined without a pass: it has no logits yet
                tokens.append(seq.feed)
                drained += 1
                continue
            if seq.finish is not None:  # draining: its last token has run, nothing is picked
                tokens.append(seq.token_ids[-1])
                drained += 1
                continue
            params = seq.params
            if params.temperature == 0:
                token = greedy[i]
            else:
                token = sample_token(logits[i], params.temperature, params.top_p, seq.generator)
            tokens.append(token)
            seq.token_ids.append(token)
            seq.logprobs.append(float(logprobs[i, token]))
            seq.top_logprobs.append(tuple(top_values[i][: params.logprobs]) if top_values else ())
            seq.settle(self.loaded.eos_ids, self._detokenize, self.loaded.max_positions)
            watch = seq.owner.request.watch
            if watch is not None and seq.finish is None and len(seq.token_ids) % watch.every == 0:
                self._check_watch(seq, watch)
            if seq.owner.on_text is not None:
                text = seq.text if seq.finish else self._detokenize(seq.token_ids)
                try:
                    seq.owner.on_text(seq.index, text)
                except Exception as exc:  # a listener gone (its loop closed) must not fail the batch
                    log.debug("on_text failed", error=str(exc))
        self.stats.decode_tokens += len(active) - drained
        return tokens

    def _detokenize(self, token_ids: list[int]) -> str:
        return self.loaded.tokenizer.decode(token_ids, skip_special_tokens=True)

    def _check_watch(self, seq: SequenceState, watch: Watch) -> None:
        """End ``seq`` here (finish ``length``) when its request's watch says stop."""
        seq.text = self._detokenize(seq.token_ids)
        try:
            stop = watch.stop(seq.completion("length"))
        except Exception as exc:  # a broken check fails its own request, not the batch
            seq.owner.fail(BackendError(f"the request's watch failed: {type(exc).__name__}: {exc}"))
            stop = True
        if stop:
            seq.finish = "length"
