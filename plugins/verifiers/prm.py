"""The ``prm`` verifier: a process reward model scores every step of every path.

One ``score`` call gets every path pending in a scheduler tick. Steps whose prefix was
scored before (beam search re-scores each growing path every round) come from an LRU
cache keyed by a hash chain over (format, question, step 1, ..., step k); the paths that
still have unscored steps are cut after their last unscored step, sorted by length and
run through the model in batches. A causal model's output at a position depends only on
the tokens before it, so a cached score, a batched score and a one-by-one score are the
same number.

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
  step scores).

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

import structlog
from attrs import define

from reason.components import Verifier
from reason.errors import UsageError, VerifierError
from reason.types import Score, ScoreRequest

from .prm_formats import FORMATS, PRMFormat, guess_format, make_format

log = structlog.get_logger("reason")

DEFAULT_BATCH_SIZE = 8
DEFAULT_CACHE_SIZE = 100_000


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
    """

    calls: int = 0
    paths: int = 0
    steps: int = 0
    cached: int = 0
    computed: int = 0
    batches: int = 0
    tokens: int = 0
    seconds: float = 0.0

    @property
    def hit_rate(self) -> float:
        return self.cached / self.steps if self.steps else 0.0

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0

    def record(self, paths: int, cached: int, computed: int, batches: int, tokens: int, seconds: float) -> dict[str, Any]:
        """Count one ``score`` call; returns that call's own figures."""
        self.calls += 1
        self.paths += paths
        self.steps += cached + computed
        self.cached += cached
        self.computed += computed
        self.batches += batches
        self.tokens += tokens
        self.seconds += seconds
        return {
            "paths": paths,
            "steps": cached + computed,
            "cached": cached,
            "computed": computed,
            "batches": batches,
            "tokens": tokens,
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
            "seconds": round(self.seconds, 4),
            "steps_per_second": round(self.steps_per_second, 2),
        }


# -- reading model outputs ----------------------------------------------------------------


@define
class Row:
    """One forward input: token ids and the positions to read."""

    input_ids: list[int]
    positions: list[int]


def read_scores(
    model: Any,
    rows: Sequence[Row],
    *,
    head: str,
    labels: tuple[Sequence[int], Sequence[int]] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    pad_id: int = 0,
) -> tuple[list[list[float]], int]:
    """Run ``rows`` through ``model`` in right-padded batches (longest first) and return,
    per row, the score at each of its positions, plus the number of batches run.

    ``head="lm"``: ``labels = (good_ids, bad_ids)``; the score is the probability mass of the
    good ids over good+bad at the next-token distribution of the position.
    ``head="classifier"``: the model returns two-class logits per token; the score is
    softmax(logits)[1].
    """
    import torch

    device = next(model.parameters()).device
    limit = getattr(model.config, "max_position_embeddings", None)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].input_ids))
    out: list[list[float]] = [[] for _ in rows]
    batches = 0
    if head == "lm":
        assert labels is not None
        good = torch.tensor(list(labels[0]), device=device)
        bad = torch.tensor(list(labels[1]), device=device)
    for start in range(0, len(order), max(1, batch_size)):
        chunk = order[start : start + batch_size]
        width = max(len(rows[i].input_ids) for i in chunk)
        if limit and width > limit:
            raise VerifierError(
                f"prm: a path is {width} tokens, more than the {limit} the scoring model handles; lower --max-tokens"
            )
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        batch_index, seq_index = [], []
        for b, i in enumerate(chunk):
            row = rows[i]
            ids[b, : len(row.input_ids)] = torch.tensor(row.input_ids, dtype=torch.long)
            mask[b, : len(row.input_ids)] = 1
            batch_index += [b] * len(row.positions)
            seq_index += row.positions
        ids, mask = ids.to(device), mask.to(device)
        bi = torch.tensor(batch_index, device=device)
        si = torch.tensor(seq_index, device=device)
        with torch.inference_mode():
            if head == "lm":
                logits = _lm_logits_at(model, ids, mask, bi, si).float()
                good_mass = torch.logsumexp(logits[:, good], dim=-1)
                bad_mass = torch.logsumexp(logits[:, bad], dim=-1)
                scores = torch.sigmoid(good_mass - bad_mass)
            elif head == "classifier":
                output = model(input_ids=ids, attention_mask=mask)
                logits = output.logits if hasattr(output, "logits") else output[0]
                if logits.shape[-1] != 2:
                    raise VerifierError(f"prm: the qwen format needs a two-class reward head, got {logits.shape[-1]} outputs")
                scores = torch.softmax(logits[bi, si].float(), dim=-1)[:, 1]
            else:
                raise ValueError(f"unknown head {head!r}")
        values = scores.cpu().tolist()
        offset = 0
        for i in chunk:
            count = len(rows[i].positions)
            out[i] = values[offset : offset + count]
            offset += count
        batches += 1
    return out, batches


def _lm_logits_at(model: Any, ids: Any, mask: Any, bi: Any, si: Any) -> Any:
    """Next-token logits at (bi, si) only: the decoder's hidden states are gathered first
    and only those rows go through the LM head (full-vocabulary logits for every position
    of every path would cost gigabytes)."""
    base = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if base is None or base is model or head is None:
        return model(input_ids=ids, attention_mask=mask).logits[bi, si]
    hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state[bi, si]
    logits = head(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = logits.div(cap).tanh().mul(cap)
    return logits


# -- the verifier -------------------------------------------------------------------------


def int_option(config: Any, key: str, default: int, minimum: int, owner: str) -> int:
    value = config.option(key, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"verifier {owner}: -o {key}={value!r} must be an integer") from None
    if number < minimum:
        raise UsageError(f"verifier {owner}: -o {key}={value!r} must be at least {minimum}")
    return number


class PRMVerifier(Verifier):
    """Scores each step with a process reward model (see the module docs for options)."""

    def __init__(self, config: Any, arg: str | None = None) -> None:
        super().__init__(config, arg)
        from reason.plugins.backends.models import resolve_model

        self.model_spec: str | None = arg or config.option("prm_model")
        self.source = resolve_model(self.model_spec)  # a missing path fails now, not mid-run
        format_name = str(config.option("prm_format", "auto")).lower()
        if format_name == "auto":
            format_name = guess_format(self.source.path)
        if format_name not in FORMATS:
            raise UsageError(f"verifier prm: unknown prm_format {format_name!r}; choose one of auto, {', '.join(FORMATS)}")
        self.format: PRMFormat = make_format(format_name, config.options)
        self.batch_size = int_option(config, "prm_batch_size", DEFAULT_BATCH_SIZE, 1, "prm")
        self.device = config.option("prm_device", config.device)
        self.dtype = config.option("prm_dtype", config.dtype)
        self.cache = PrefixCache(int_option(config, "prm_cache_size", DEFAULT_CACHE_SIZE, 0, "prm"))
        self.stats = ScoringStats()
        self.last_call: dict[str, Any] = {}
        self.namespace = f"prm|{self.source.key}|{self.format.identity()}"
        self._model: Any = None
        self._tokenizer: Any = None
        self._labels: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        self._lock = threading.Lock()

    # -- model ---------------------------------------------------------------------------

    def load(self) -> None:
        """Load the model and tokenizer (once; the first ``score`` does it)."""
        if self._model is not None:
            return
        from reason.plugins.backends.models import load_model, load_tokenizer

        tokenizer = load_tokenizer(self.source)
        if self.format.head == "classifier":
            model = load_reward_head(self.source, self.device, self.dtype)
        else:
            model = load_model(self.source, device=self.device, dtype=self.dtype)
            good, bad = self.format.labels(tokenizer)
            self._labels = ((good,), (bad,))
        self._tokenizer, self._model = tokenizer, model
        log.debug("prm loaded", model=self.source.name, format=self.format.name, device=str(model.device))

    @property
    def tokenizer(self) -> Any:
        self.load()
        return self._tokenizer

    def close(self) -> None:
        self._model = None

    # -- scoring -------------------------------------------------------------------------

    def score(self, requests: Sequence[ScoreRequest]) -> list[Score]:
        with self._lock:
            return self._score(requests)

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
        batches = tokens = computed = 0
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
            values, batches = self._read(rows)
            for (_, keys, missing), row_values in zip(jobs, values):
                for k, value in zip(missing, row_values):
                    value = min(1.0, max(0.0, float(value)))
                    results[keys[k]] = value
                    self.cache.put(keys[k], value)
            computed = sum(len(row.positions) for row in rows)
            tokens = sum(len(row.input_ids) for row in rows)
        scores = [Score(step_scores=tuple(results[key] for key in keys)) for keys in per_request]
        self.last_call = self.stats.record(len(requests), cached, computed, batches, tokens, time.perf_counter() - start)
        log.debug("verifier scored", verifier=getattr(self, "spec", "prm"), **self.last_call)
        return scores

    def _read(self, rows: list[Row]) -> tuple[list[list[float]], int]:
        pad = self._tokenizer.pad_token_id
        if pad is None:
            pad = self._tokenizer.eos_token_id or 0
        return read_scores(
            self._model, rows, head=self.format.head, labels=self._labels, batch_size=self.batch_size, pad_id=pad
        )


# -- two-class reward heads (Qwen2.5-Math-PRM) ---------------------------------------------

_heads: dict[tuple[str, str, str], Any] = {}
_heads_lock = threading.Lock()


def load_reward_head(source: Any, device: str | None, dtype: str | None) -> Any:
    """Load a PRM whose head is custom code (``Qwen2ForProcessRewardModel``), once per
    process. The models module loads stock transformers classes; this head needs
    ``trust_remote_code``, which is why it is loaded here."""
    from reason.plugins.backends.models import resolve_device, resolve_dtype

    if source.kind == "gguf":
        raise UsageError("verifier prm: the qwen format needs the PRM's HF directory or hub id, not a .gguf file")
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
