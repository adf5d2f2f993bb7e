"""The embedded policy backend: a transformers causal LM, CPU or GPU, in-process.

``generate`` runs every request of a scheduler tick in one batched decode loop written
over the model's forward pass (not ``model.generate``), because the runtime needs things
``generate`` does not give together: per-request stop strings, temperature, top-p, seed
and logprobs in one batch, per-sequence reproducible sampling, sequences that leave the
batch as soon as they finish, and KV caches reused across calls.

Layout of one batch: sequences are left-padded, with an explicit attention mask and
position ids, so each sequence's keys carry the same rotary positions whatever else is in
the batch. Prefix reuse: the KV cache of every finished sequence (prompt + generated
tokens) goes into a bounded LRU keyed by token ids. A later prompt that shares a prefix
with an entry (the next step of the same path, another sample of the same prompt) only
encodes the tokens after the longest shared prefix; the n samples of one prompt share one
prefill.

Options (``config.options``): ``max_batch`` (sequences per forward pass; larger ticks are
chunked), ``prefix_cache_tokens`` (KV cache budget in tokens, 0 disables reuse),
``threads`` (torch CPU threads for this process; on a busy machine fewer threads than
cores avoids OpenMP oversubscription, which can slow decoding several times).
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from attrs import asdict, define, field

from reason.components import Backend
from reason.errors import BackendError
from reason.log import get_logger
from reason.types import Completion, FinishReason, GenerateRequest, SamplingParams

from . import models
from .models import prompt_ids

if TYPE_CHECKING:
    import torch

    from reason.config import Config

log = get_logger()

DEFAULT_MAX_BATCH_CPU = 16
DEFAULT_MAX_BATCH_GPU = 64
DEFAULT_PREFIX_CACHE_TOKENS = 8192


@define
class BackendStats:
    """Counters for benchmarks: what the backend computed and what it reused."""

    calls: int = 0
    sequences: int = 0
    forward_passes: int = 0
    prefill_tokens: int = 0
    """Prompt tokens encoded (padding excluded)."""
    reused_tokens: int = 0
    """Prompt tokens whose keys and values came from the prefix cache instead."""
    decode_tokens: int = 0
    """Tokens generated."""
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


@define
class _Sequence:
    """One sample being generated: where it came from, and what it produced so far."""

    request: int
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

    def __init__(self, config: Config, arg: str | None = None) -> None:
        super().__init__(config, arg)
        self.spec = config.model or arg
        self.source = models.resolve_model(self.spec)  # fails fast on a missing path
        self.max_batch = config.option("max_batch", None, int, minimum=1)
        self.prefix_cache = PrefixCache(
            config.option("prefix_cache_tokens", DEFAULT_PREFIX_CACHE_TOKENS, int, minimum=0)
        )
        self.threads = config.option("threads", None, int, minimum=1)
        self.stats = BackendStats()
        self._lock = threading.Lock()
        self._rng = random.Random()
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
        if self._model is None:
            self._model = models.load_model(self.source, self.config.device, self.config.dtype)
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

    def close(self) -> None:
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

    # -- generation -------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
        import torch

        with self._lock, torch.inference_mode():
            self.load()
            self.stats.calls += 1
            sequences = self._sequences(requests)
            # Similar lengths in one chunk waste less padding; identical prompts end up
            # next to each other and share a prefill.
            order = sorted(sequences, key=lambda s: (len(s.prompt_ids), s.prompt_ids, s.request, s.index))
            for start in range(0, len(order), self.max_batch):
                self._run_chunk(order[start : start + self.max_batch])
            out: list[list[Completion]] = [[] for _ in requests]
            for seq in sequences:
                out[seq.request].append(seq.completion())
            return out

    def _sequences(self, requests: Sequence[GenerateRequest]) -> list[_Sequence]:
        import torch

        sequences = []
        for r, request in enumerate(requests):
            ids = tuple(self.encode(request.prompt))
            if len(ids) >= self.max_positions:
                raise BackendError(
                    f"the prompt has {len(ids)} tokens; {self.model_name} takes at most {self.max_positions}"
                )
            seed = request.params.seed
            if seed is None:
                seed = self._rng.getrandbits(63)
            for i in range(request.n):
                generator = None
                if request.params.temperature > 0:
                    generator = torch.Generator(device=self.device)
                    generator.manual_seed(_sample_seed(seed, i))
                sequences.append(_Sequence(request=r, index=i, params=request.params, prompt_ids=ids, generator=generator))
        self.stats.sequences += len(sequences)
        return sequences

    def _run_chunk(self, chunk: list[_Sequence]) -> None:
        import torch

        model = self._model
        start = time.perf_counter()
        prompts: dict[tuple[int, ...], int] = {}
        for seq in chunk:
            prompts.setdefault(seq.prompt_ids, len(prompts))
        cache, mask, logits = self._prefill(list(prompts))
        rows = torch.tensor([prompts[s.prompt_ids] for s in chunk], device=self.device)
        if len(prompts) != len(chunk):
            for layer in cache.layers:
                layer.batch_select_indices(rows)
            mask, logits = mask[rows], logits[rows]
        lengths = [len(s.prompt_ids) for s in chunk]  # tokens in the cache, per row
        self.stats.prefill_seconds += time.perf_counter() - start

        start = time.perf_counter()
        active = list(chunk)
        while True:
            tokens = self._pick(active, logits)
            keep = [i for i, seq in enumerate(active) if seq.finish is None]
            finished = [i for i, seq in enumerate(active) if seq.finish is not None]
            for i in finished:
                self._remember(active[i], cache, i, lengths[i], mask.shape[1])
            if not keep:
                break
            if finished:
                index = torch.tensor(keep, device=self.device)
                for layer in cache.layers:
                    layer.batch_select_indices(index)
                mask = mask[index]
                active = [active[i] for i in keep]
                tokens = [tokens[i] for i in keep]
                lengths = [lengths[i] for i in keep]
                mask = self._trim(cache, mask)
            input_ids = torch.tensor([[t] for t in tokens], device=self.device)
            positions = torch.tensor([[n] for n in lengths], device=self.device)
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            out = model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            self.stats.forward_passes += 1
            logits = out.logits[:, -1, :]
            lengths = [n + 1 for n in lengths]
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


def _sample_seed(seed: int, index: int) -> int:
    """A per-sample seed, so sample ``index`` of a request draws the same numbers whatever
    else is in the batch."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "little") & ((1 << 63) - 1)
