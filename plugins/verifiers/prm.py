"""The ``prm`` verifier: a process reward model scores every step of every path.

One ``score`` call gets every path whose score was asked for while the previous call
ran. Steps whose prefix was scored before (beam search re-scores each growing path every round) come from an LRU
cache keyed by a hash chain over (format, question, step 1, ..., step k); the paths that
still have unscored steps are cut after their last unscored step, sorted by length and
run through the model in batches, and the keys and values of a path encoded last round
are reused so only its new tokens run. A causal model's output at a position depends
only on the tokens before it, so a cached score, a batched score and a one-by-one score
are the same number (up to float rounding).

The default model (``--verifier prm`` without ``prm:MODEL`` or ``-o prm.model``) is the
default policy model: it only exercises the code path, it is no reward model. The
options are :class:`PRMVerifier.Options` (``reason plugins`` lists them; the CLI's
``--prm-*`` flags set the same).

``config.aggregation`` (``--prm-agg``) reduces the step scores to a path score; the
search context applies it.

This module holds the verifier and the loader of two-class reward heads; what it shares
with ``self-eval`` is in :mod:`.model_verifier` (score cache, counters, options, base
class) and :mod:`.scoring` (running the model), the formats in :mod:`.prm_formats`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import reason  # noqa: F401
from reason.errors import UsageError, VerifierError
from reason.log import get_logger
from reason.options import Option
from reason.types import Score, ScoreRequest

from .model_verifier import ModelVerifier, ScoringOptions, prefix_keys
from .prm_formats import FormatOptions, PRMFormat, guess_format, make_format
from .scoring import ModelReader, ReadResult, Row, pad_id

log = get_logger("reason")


class PRMVerifier(ModelVerifier):
    """Scores each step with a process reward model (see the module docs for options)."""

    class Options(FormatOptions, ScoringOptions):
        prefix = "prm_"
        model = Option(str, None, help="the reward model: HF dir, hub id or .gguf [--verifier prm:MODEL, else the default model]")

    options: Options

    def __init__(self, config: Any, arg: str | None = None, **kwargs: Any) -> None:
        super().__init__(config, arg, **kwargs)
        from reason.plugins.backends.models import resolve_model

        self.model_spec: str | None = arg or self.options.model
        self.source = resolve_model(self.model_spec)  # a missing path fails now, not mid-run
        format_name = self.options.format
        if format_name == "auto":
            format_name = guess_format(self.source.path)
        self.format: PRMFormat = make_format(format_name, self.options)
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
                encoded = self.format.encode(self._tokenizer, request.task.question, [s.text for s in request.steps[: last + 1]])
                rows.append(Row(list(encoded.input_ids[: encoded.positions[last] + 1]), [encoded.positions[k] for k in missing]))
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
