"""The embedded policy backend: a transformers causal LM, CPU or GPU, in-process, with a
continuous-batching decode loop (:mod:`.transformers_loop`) and KV prefix reuse (:mod:`.kv`).

The loop is written over the model's forward pass (not ``model.generate``), because the
runtime needs what ``generate`` does not give together: per-request stop strings,
temperature, top-p, seed and logprobs in one batch, per-sequence reproducible sampling,
sequences that leave and join the batch between decode steps, and KV caches reused
across requests.

Reproducible means bit for bit on CPU in float32: a seeded or greedy request gives the same
tokens whatever else shares its batch. On CUDA in bfloat16 it does not hold, since the
kernels change with the batch's shape (on an H200, greedy text diverged at token 5 between
a batch of 2 and a batch of 1); there a seeded run repeats only with the same batches.

This module holds the backend class: loading the model, prompts, and handing requests
to the loop.

The backend loads the model and hands requests to the decode loop it owns
(:class:`.transformers_loop.DecodeLoop`); its options are :class:`TransformersBackend.Options`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import reason
from reason.components import Backend
from reason.options import Option
from reason.types import Completion, GenerateRequest

from . import kv, models
from .kv import KV, PrefixCache
from .models import prompt_ids
from .transformers_loop import DecodeLoop
from .transformers_sequences import BackendStats, LoadedModel, PendingRequest

if TYPE_CHECKING:
    from reason.config import Config

DEFAULT_MAX_BATCH_CPU = 16
DEFAULT_MAX_BATCH_GPU = 64
DEFAULT_PREFIX_CACHE_TOKENS = 32768
"""Enough for the live paths of a few dozen concurrent searches on a small model
(SmolLM2-135M: 46 KB of float32 keys and values per token, so about 1.5 GB)."""


class TransformersBackend(Backend):
    """Batched generation with a transformers causal LM (see the module docstring)."""

    class Options(reason.Options):
        max_batch = Option(
            int,
            None,
            minimum=1,
            help=f"rows decoded together [{DEFAULT_MAX_BATCH_CPU} on CPU, {DEFAULT_MAX_BATCH_GPU} on GPU]",
        )
        admit_min = Option(
            int, None, minimum=1, help="free rows before newcomers that need a prefill pass join a running batch [max_batch/4]"
        )
        prefix_cache_tokens = Option(
            int, DEFAULT_PREFIX_CACHE_TOKENS, minimum=0, help="KV cache budget for prefix reuse (0: off)"
        )
        threads = Option(int, None, minimum=1, help="torch CPU threads (fewer than cores on a busy machine) [torch's]")
        continuous = Option(bool, True, help="false: lockstep batches, for comparisons")

    options: Options

    def __init__(self, config: Config, arg: str | None = None, **kwargs: Any) -> None:
        super().__init__(config, arg, **kwargs)
        model_spec = config.model or arg
        self.source = models.resolve_model(model_spec)  # fails fast on a missing path
        self.max_batch = self.options.max_batch or 0  # 0: chosen by the device on load
        self.prefix_cache: PrefixCache[KV] = PrefixCache(self.options.prefix_cache_tokens)
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._loaded: LoadedModel | None = None
        self.loop = DecodeLoop(self._load_for_loop, self.prefix_cache, self.emit, continuous=self.options.continuous)
        self.stats: BackendStats = self.loop.stats

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
        _ = self.model  # the property loads it once

    def _setup(self) -> None:
        import torch

        if self.options.threads is not None:
            torch.set_num_threads(self.options.threads)
        model, tokenizer = self._model, self.tokenizer
        eos: set[int] = set()
        for source in (model.generation_config.eos_token_id, model.config.eos_token_id, tokenizer.eos_token_id):
            if isinstance(source, int):
                eos.add(source)
            elif source:
                eos.update(int(t) for t in source)
        pad = tokenizer.pad_token_id
        if not self.max_batch:
            self.max_batch = DEFAULT_MAX_BATCH_GPU if model.device.type == "cuda" else DEFAULT_MAX_BATCH_CPU
        self._loaded = LoadedModel(
            model=model,
            tokenizer=tokenizer,
            name=self.model_name,
            device=model.device,
            eos_ids=frozenset(eos),
            pad_id=int(pad if pad is not None else (min(eos) if eos else 0)),
            max_positions=int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30),
            # Reusing and trimming caches assumes plain full-attention layers (no sliding
            # window, no recurrent state); other architectures still batch, without reuse.
            plain_cache=kv.plain_cache(model),
            max_batch=self.max_batch,
            # measured (beam N=8, 16 problems, 2-core CPU): 4 of 16 rows cut the prefill
            # time from 21% to 8% of the run and raised tok/s by 13% at the same results
            admit_min=self.options.admit_min or max(1, self.max_batch // 4),
        )

    def _load_for_loop(self) -> LoadedModel:
        self.load()
        assert self._loaded is not None  # load() set it up
        return self._loaded

    @property
    def device(self) -> Any:
        """Where the model runs, once loaded."""
        return self._loaded.device if self._loaded else None

    @property
    def continuous(self) -> bool:
        """False: lockstep batches (``-o transformers.continuous=false``); settable, so that
        a benchmark compares both ways on one loaded model."""
        return self.loop.continuous

    @continuous.setter
    def continuous(self, value: bool) -> None:
        self.loop.continuous = value

    @property
    def rows_in_flight(self) -> int:
        return self.loop.rows_in_flight

    @property
    def failure(self) -> str | None:
        return self.loop.failure

    def close(self) -> None:
        """Stop the decode loop (requests still running fail) and free the model."""
        self.loop.close()
        self.prefix_cache.clear()
        self._model = self._loaded = None

    def reset_stats(self) -> None:
        self.stats = self.loop.stats = BackendStats()

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
    def context_length(self) -> int | None:
        return self._loaded.max_positions if self._loaded else None

    streams_text = True
    watches = True

    @property
    def rows(self) -> int | None:
        return self.max_batch or None

    async def generate_async(
        self, request: GenerateRequest, *, on_text: Callable[[int, str], None] | None = None
    ) -> list[Completion]:
        return await asyncio.wrap_future(self.submit(request, on_text=on_text))

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
        """Blocking: the requests arrive together, so they are admitted together."""
        futures = self.loop.enqueue([PendingRequest(request, concurrent.futures.Future()) for request in requests])
        return [future.result() for future in futures]

    def submit(
        self, request: GenerateRequest, *, on_text: Callable[[int, str], None] | None = None
    ) -> concurrent.futures.Future[list[Completion]]:
        """Queue ``request`` for the decode loop; the future resolves when its ``n``
        samples are done. Cancelling the future drops its sequences from the batch.
        ``on_text(sample, text_so_far)`` is called from the loop's thread after each token."""
        (future,) = self.loop.enqueue([PendingRequest(request, concurrent.futures.Future(), on_text)])
        return future
