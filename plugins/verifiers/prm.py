"""The ``prm`` verifier: a process reward model scores every step of every path.

One ``score`` call gets every path whose score was asked for while the previous call
ran. Steps whose prefix was scored before (beam search re-scores each growing path every round) come from an LRU
cache keyed by a hash chain over (format, question, step 1, ..., step k); the paths that
still have unscored steps are cut after their last unscored step, sorted by length and
run through the model in batches, and the keys and values of a path encoded last round
are reused so only its new tokens run. A causal model's output at a position depends
only on the tokens before it, so a cached score, a batched score and a one-by-one score
are the same number (up to float rounding).

Options (``-o key=value``; the CLI's ``--prm-*`` flags set the same keys):

- ``prm_model``: HF directory, hub id or ``.gguf``; default the embedded SmolLM2 (only
  useful to exercise the code path: it is not a reward model). ``--verifier prm:MODEL``
  works too.
- ``prm_format``: ``auto`` (from the model name, else generic) | ``generic`` | ``rlhflow``
  | ``math-shepherd`` | ``qwen`` (see :mod:`.prm_formats`).
- ``prm_separator`` (``"\\n\\n"``), ``prm_good_token`` (``+``), ``prm_bad_token`` (``-``):
  the generic format. ``prm_system``: the qwen format's system prompt.
- ``prm_batch_size`` (8), ``prm_device`` (``config.device``, else auto), ``prm_dtype``
  (``config.dtype``, else float32 on CPU / bfloat16 on GPU), ``prm_cache_size`` (100000
  step scores), ``prm_kv_cache_tokens`` (16384: keys and values of encoded paths kept so
  a grown path runs only its new tokens; 0 = off).

``config.aggregation`` (``--prm-agg``) reduces the step scores to a path score; the
search context applies it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from attrs import define

from reason.components import Verifier
from reason.errors import UsageError, VerifierError
from reason.log import get_logger
from reason.options import Option
from reason.types import Score, ScoreRequest

from .prm_formats import FORMAT_OPTIONS, PRMFormat, guess_format, make_format

log = get_logger("reason")

DEFAULT_BATCH_SIZE = 8
DEFAULT_CACHE_SIZE = 100_000
DEFAULT_KV_TOKENS = 16_384


# -- prefix cache -----------------------------------------------------------------------


def prefix_keys(namespace: str, question: str, steps: Sequence[str]) -> list[bytes]:
    """One key per step: a hash chain, so key ``k`` names (namespace, question, steps[:k+1])
    and computing all of them costs one pass over the text."""
    digest = hashlib.blake2b(f"{namespace}\x00{question}".encode(), digest_size=16).digest()
    keys = []
    for step in steps:
        data = step.encode()
        digest = hashlib.blake2b(digest + len(data).to_bytes(8, "little") + data, digest_size=16).digest()
        keys.append(digest)
    return keys


class PrefixCache:
    """A bounded LRU map from prefix key to step score."""

    def __init__(self, capacity: int = DEFAULT_CACHE_SIZE) -> None:
        self.capacity = capacity
        self._data: OrderedDict[bytes, float] = OrderedDict()

    def get(self, key: bytes) -> float | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: bytes, value: float) -> None:
        if self.capacity <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()


@define
class ScoringStats:
    """Counters of a model-backed verifier, cumulative over its lifetime.

    ``steps`` are step scores returned, ``cached`` of them came from the prefix cache (or
    from another path of the same call), ``computed`` were read from a model forward.
    ``tokens`` ran through the model; ``reused`` tokens had their keys and values taken
    from the KV prefix cache instead.
    """

    calls: int = 0
    paths: int = 0
    steps: int = 0
    cached: int = 0
    computed: int = 0
    batches: int = 0
    tokens: int = 0
    reused: int = 0
    seconds: float = 0.0

    @property
    def hit_rate(self) -> float:
        return self.cached / self.steps if self.steps else 0.0

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0

    def record(
        self, paths: int, cached: int, computed: int, read: ReadResult | None, seconds: float
    ) -> dict[str, Any]:
        """Count one ``score`` call; returns that call's own figures."""
        batches, tokens, reused = (read.batches, read.tokens, read.reused) if read else (0, 0, 0)
        self.calls += 1
        self.paths += paths
        self.steps += cached + computed
        self.cached += cached
        self.computed += computed
        self.batches += batches
        self.tokens += tokens
        self.reused += reused
        self.seconds += seconds
        return {
            "paths": paths,
            "steps": cached + computed,
            "cached": cached,
            "computed": computed,
            "batches": batches,
            "tokens": tokens,
            "reused_tokens": reused,
            "seconds": round(seconds, 4),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "paths": self.paths,
            "steps": self.steps,
            "cached": self.cached,
            "computed": self.computed,
            "hit_rate": round(self.hit_rate, 4),
            "batches": self.batches,
            "tokens": self.tokens,
            "reused_tokens": self.reused,
            "seconds": round(self.seconds, 4),
            "steps_per_second": round(self.steps_per_second, 2),
        }


# -- reading model outputs ----------------------------------------------------------------


@define
class Row:
    """One forward input: token ids and the positions to read."""

    input_ids: list[int]
    positions: list[int]


@define
class ReadResult:
    values: list[list[float]]
    """Per row, the score at each of its positions."""
    batches: int = 0
    tokens: int = 0
    """Tokens run through the model."""
    reused: int = 0
    """Tokens whose keys and values came from the KV prefix cache instead."""


class ModelReader:
    """Runs rows through a model in batches (longest first) and reads a score at each
    requested position.

    ``head="lm"``: ``labels = (good_ids, bad_ids)``; the score is the probability mass of
    the good ids over good+bad in the next-token distribution at the position. Only the
    decoder runs over the whole batch; the LM head runs on the gathered positions alone
    (full-vocabulary logits at every position would cost gigabytes).
    ``head="classifier"``: the model returns two-class logits per token; the score is
    softmax(logits)[1].

    With ``kv_tokens > 0`` (``lm`` head, plain full-attention models) the keys and values
    of every encoded row are kept in an LRU bounded in tokens, and a row whose prefix was
    encoded before (the same path one step shorter, last round) runs only its new tokens.
    Rows are left-padded so that cached prefixes of different lengths line up.
    """

    def __init__(
        self,
        model: Any,
        *,
        head: str,
        labels: tuple[Sequence[int], Sequence[int]] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        pad_id: int = 0,
        kv_tokens: int = 0,
    ) -> None:
        if head not in ("lm", "classifier"):
            raise ValueError(f"unknown head {head!r}")
        if head == "lm" and labels is None:
            raise ValueError("an lm head needs (good, bad) label ids")
        self.model, self.head, self.labels = model, head, labels
        self.batch_size, self.pad_id = max(1, batch_size), pad_id
        self.device = next(model.parameters()).device
        self.limit = getattr(model.config, "max_position_embeddings", None)
        base = getattr(model, "base_model", None)
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.split = base is not None and base is not model and out is not None
        self.kv = None
        if kv_tokens > 0 and head == "lm" and self.split and _plain_cache(model):
            from reason.plugins.backends.transformers import PrefixCache as KVPrefixCache

            self.kv = KVPrefixCache(kv_tokens)

    def read(self, rows: Sequence[Row]) -> ReadResult:
        result = ReadResult(values=[[] for _ in rows])
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i].input_ids))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            values = self._chunk([rows[i] for i in chunk], result)
            for i, row_values in zip(chunk, values):
                result.values[i] = row_values
            result.batches += 1
        return result

    def _chunk(self, rows: list[Row], result: ReadResult) -> list[list[float]]:
        import torch

        total = max(len(row.input_ids) for row in rows)
        if self.limit and total > self.limit:
            raise VerifierError(
                f"prm: a path is {total} tokens, more than the {self.limit} the scoring model handles; lower --max-tokens"
            )
        hits = []
        for row in rows:
            cached, kv = self.kv.lookup(row.input_ids) if self.kv is not None else (0, None)
            # every read position must run through the model: its hidden state is needed
            hits.append((min(cached, min(row.positions)), kv))
        width = max(len(row.input_ids) - cached for row, (cached, _) in zip(rows, hits))
        past = total - width
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), total), dtype=torch.long)
        batch_index, column_index = [], []
        for u, row in enumerate(rows):
            n = len(row.input_ids)
            first = max(0, n - width)  # this row's tokens before `first` come from the cache
            ids[u, width - (n - first) :] = torch.tensor(row.input_ids[first:], dtype=torch.long)
            position_ids[u, width - (n - first) :] = torch.arange(first, n)
            mask[u, total - n :] = 1
            batch_index += [u] * len(row.positions)
            column_index += [p - n + width for p in row.positions]
            result.tokens += n - first
            result.reused += first
        device = self.device
        bi = torch.tensor(batch_index, device=device)
        ci = torch.tensor(column_index, device=device)
        with torch.inference_mode():
            if self.head == "classifier":
                output = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position_ids.to(device))
                logits = output.logits if hasattr(output, "logits") else output[0]
                if logits.shape[-1] != 2:
                    raise VerifierError(f"prm: the qwen format needs a two-class reward head, got {logits.shape[-1]} outputs")
                scores = torch.softmax(logits[bi, ci].float(), dim=-1)[:, 1]
            else:
                logits = self._lm_logits(rows, hits, past, ids, position_ids, mask, bi, ci).float()
                good = torch.tensor(list(self.labels[0]), device=device)
                bad = torch.tensor(list(self.labels[1]), device=device)
                scores = torch.sigmoid(torch.logsumexp(logits[:, good], dim=-1) - torch.logsumexp(logits[:, bad], dim=-1))
        values = scores.cpu().tolist()
        out, offset = [], 0
        for row in rows:
            out.append(values[offset : offset + len(row.positions)])
            offset += len(row.positions)
        return out

    def _lm_logits(self, rows: list[Row], hits: list, past: int, ids: Any, position_ids: Any, mask: Any, bi: Any, ci: Any) -> Any:
        model, device = self.model, self.device
        ids, position_ids, mask = ids.to(device), position_ids.to(device), mask.to(device)
        if not self.split:
            return model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits[bi, ci]
        kwargs: dict[str, Any] = {}
        if self.kv is not None:
            kwargs.update(use_cache=True, past_key_values=self._past(rows, hits, past, ids.shape[1]))
        output = model.base_model(input_ids=ids, attention_mask=mask, position_ids=position_ids, **kwargs)
        if self.kv is not None:
            total = mask.shape[1]
            for u, row in enumerate(rows):
                n = len(row.input_ids)
                kv = [
                    (layer.keys[u, :, total - n :].clone(), layer.values[u, :, total - n :].clone())
                    for layer in output.past_key_values.layers
                ]
                self.kv.insert(row.input_ids, kv)
        logits = model.get_output_embeddings()(output.last_hidden_state[bi, ci])
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap:
            logits = logits.div(cap).tanh().mul(cap)
        return logits

    def _past(self, rows: list[Row], hits: list, past: int, width: int) -> Any:
        """A cache holding, left-padded to ``past`` columns, each row's cached prefix."""
        from transformers import DynamicCache

        if past <= 0:
            return DynamicCache(config=self.model.config)
        reference = next(kv for cached, kv in hits if kv is not None and cached > 0)
        layers = []
        for layer in range(len(reference)):
            heads, _, dim = reference[layer][0].shape
            keys = reference[layer][0].new_zeros((len(rows), heads, past, dim))
            values = reference[layer][1].new_zeros((len(rows), heads, past, dim))
            for u, (row, (_, kv)) in enumerate(zip(rows, hits)):
                used = len(row.input_ids) - width  # the row's tokens that sit in the past columns
                if used > 0:
                    keys[u, :, past - used :] = kv[layer][0][:, :used]
                    values[u, :, past - used :] = kv[layer][1][:, :used]
            layers.append((keys, values))
        return DynamicCache(layers, config=self.model.config)


def pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    return int(pad or 0)


def _plain_cache(model: Any) -> bool:
    """Whether the model's cache is plain full attention (no sliding window, no recurrent
    state): only then can cached prefixes be spliced in."""
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        probe = DynamicCache(config=model.config)
        return all(type(layer) is DynamicLayer for layer in probe.layers)
    except Exception:
        return False


def read_scores(
    model: Any,
    rows: Sequence[Row],
    *,
    head: str,
    labels: tuple[Sequence[int], Sequence[int]] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    pad_id: int = 0,
) -> tuple[list[list[float]], int]:
    """One-shot :class:`ModelReader` without KV reuse: per-row scores and batches run."""
    result = ModelReader(model, head=head, labels=labels, batch_size=batch_size, pad_id=pad_id).read(rows)
    return result.values, result.batches


# -- the verifier -------------------------------------------------------------------------


def scoring_options(prefix: str) -> tuple[Option, ...]:
    """The options of a verifier that reads a scoring model, under ``prefix``."""
    return (
        Option(f"{prefix}_batch_size", int, DEFAULT_BATCH_SIZE, minimum=1, help="paths per forward pass"),
        Option(f"{prefix}_device", str, None, help="the scoring model's device [--device, else auto]"),
        Option(f"{prefix}_dtype", str, None, help="its weights dtype [--dtype, else float32 on CPU, bfloat16 on GPU]"),
        Option(f"{prefix}_cache_size", int, DEFAULT_CACHE_SIZE, minimum=0, help="step scores remembered by path prefix"),
        Option(f"{prefix}_kv_cache_tokens", int, DEFAULT_KV_TOKENS, minimum=0, help="keys and values kept so a grown path runs only its new tokens (0: off)"),
    )


class ModelVerifier(Verifier):
    """What the verifiers that read a scoring model share (``prm``, ``self-eval``).

    Options, each under the subclass's ``option_prefix``: ``_batch_size``, ``_device``,
    ``_dtype``, ``_cache_size`` (scores remembered by path prefix) and
    ``_kv_cache_tokens`` (reused key/value tokens). The model loads on the first ``score``
    (subclasses implement ``load`` and ``_score``); one scoring call runs at a time.
    """

    option_prefix = ""
    config_fields = ("device", "dtype")

    def __init__(self, config: Any, arg: str | None = None) -> None:
        super().__init__(config, arg)
        p = self.option_prefix
        self.batch_size = self.option(f"{p}_batch_size")
        self.device = self.option(f"{p}_device") or config.device
        self.dtype = self.option(f"{p}_dtype") or config.dtype
        self.cache = PrefixCache(self.option(f"{p}_cache_size"))
        self.kv_tokens = self.option(f"{p}_kv_cache_tokens")
        self.stats = ScoringStats()
        self.last_call: dict[str, Any] = {}
        self._model: Any = None
        self._tokenizer: Any = None
        self._reader: ModelReader | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        raise NotImplementedError

    def _score(self, requests: Sequence[ScoreRequest]) -> list[Score]:
        raise NotImplementedError

    @property
    def tokenizer(self) -> Any:
        self.load()
        return self._tokenizer

    def score(self, requests: Sequence[ScoreRequest]) -> list[Score]:
        with self._lock:
            return self._score(requests)

    def close(self) -> None:
        self._model = self._reader = None


class PRMVerifier(ModelVerifier):
    """Scores each step with a process reward model (see the module docs for options)."""

    option_prefix = "prm"
    options = (
        Option("prm_model", str, None, help="the reward model: HF dir, hub id or .gguf [--verifier prm:MODEL, else the embedded model]"),
        *FORMAT_OPTIONS,
        *scoring_options("prm"),
    )

    def __init__(self, config: Any, arg: str | None = None) -> None:
        super().__init__(config, arg)
        from reason.plugins.backends.models import resolve_model

        self.model_spec: str | None = arg or self.option("prm_model")
        self.source = resolve_model(self.model_spec)  # a missing path fails now, not mid-run
        format_name = self.option("prm_format")
        if format_name == "auto":
            format_name = guess_format(self.source.path)
        self.format: PRMFormat = make_format(format_name, config.options)
        if self.format.head == "classifier" and self.source.kind == "gguf":
            raise UsageError(
                f"verifier prm: the {format_name} format needs the PRM's HF directory or hub id (its reward head "
                "is not a language model), not a .gguf file: pass --prm-model DIR"
            )
        self.namespace = f"prm|{self.source.key}|{self.format.identity()}"

    # -- model ---------------------------------------------------------------------------

    def load(self) -> None:
        """Load the model and tokenizer (once; the first ``score`` does it)."""
        if self._model is not None:
            return
        from reason.plugins.backends.models import load_model, load_tokenizer

        tokenizer = load_tokenizer(self.source)
        labels = None
        if self.format.head == "classifier":
            model = load_reward_head(self.source, self.device, self.dtype)
        else:
            model = load_model(self.source, device=self.device, dtype=self.dtype)
            good, bad = self.format.labels(tokenizer)
            labels = ((good,), (bad,))
        self._reader = ModelReader(
            model,
            head=self.format.head,
            labels=labels,
            batch_size=self.batch_size,
            pad_id=pad_id(tokenizer),
            kv_tokens=self.kv_tokens,
        )
        self._tokenizer, self._model = tokenizer, model
        log.debug("prm loaded", model=self.source.name, format=self.format.name, device=str(model.device))

    # -- scoring -------------------------------------------------------------------------

    def _score(self, requests: Sequence[ScoreRequest]) -> list[Score]:
        start = time.perf_counter()
        results: dict[bytes, float] = {}
        scheduled: set[bytes] = set()
        per_request: list[list[bytes]] = []
        jobs: list[tuple[ScoreRequest, list[bytes], list[int]]] = []
        cached = 0
        for request in requests:
            steps = [step.text for step in request.steps]
            keys = prefix_keys(self.namespace, request.task.question, [s.strip() for s in steps])
            per_request.append(keys)
            missing = []
            for k, key in enumerate(keys):
                value = self.cache.get(key)
                if value is not None:
                    results[key] = value
                    cached += 1
                elif key in scheduled:
                    cached += 1  # another path of this call computes it
                else:
                    scheduled.add(key)
                    missing.append(k)
            if missing:
                jobs.append((request, keys, missing))
        computed = 0
        read = None
        if jobs:
            self.load()
            rows = []
            for request, _, missing in jobs:
                last = missing[-1]
                encoded = self.format.encode(
                    self._tokenizer, request.task.question, [s.text for s in request.steps[: last + 1]]
                )
                rows.append(
                    Row(list(encoded.input_ids[: encoded.positions[last] + 1]), [encoded.positions[k] for k in missing])
                )
            read = self._read(rows)
            for (_, keys, missing), row_values in zip(jobs, read.values):
                for k, value in zip(missing, row_values):
                    value = min(1.0, max(0.0, float(value)))
                    results[keys[k]] = value
                    self.cache.put(keys[k], value)
            computed = sum(len(row.positions) for row in rows)
        scores = [Score(step_scores=tuple(results[key] for key in keys)) for keys in per_request]
        self.last_call = self.stats.record(len(requests), cached, computed, read, time.perf_counter() - start)
        log.debug("verifier scored", verifier=getattr(self, "spec", "prm"), **self.last_call)
        return scores

    def _read(self, rows: list[Row]) -> ReadResult:
        """Run the model (the one place an engine other than transformers plugs in)."""
        assert self._reader is not None
        return self._reader.read(rows)


# -- two-class reward heads (Qwen2.5-Math-PRM) ---------------------------------------------

_heads: dict[tuple[str, str, str], Any] = {}
_heads_lock = threading.Lock()


def load_reward_head(source: Any, device: str | None, dtype: str | None) -> Any:
    """Load a PRM whose head is custom code (``Qwen2ForProcessRewardModel``), once per
    process. The models module loads stock transformers classes; this head needs
    ``trust_remote_code``, which is why it is loaded here."""
    from reason.plugins.backends.models import resolve_device, resolve_dtype

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    key = (source.key, device, str(torch_dtype))
    with _heads_lock:
        if key not in _heads:
            import transformers

            try:
                model = transformers.AutoModel.from_pretrained(source.path, trust_remote_code=True, dtype=torch_dtype)
            except OSError as exc:
                raise VerifierError(f"prm: could not load reward model {source.path}: {exc}") from exc
            _heads[key] = model.to(device).eval()
        return _heads[key]
