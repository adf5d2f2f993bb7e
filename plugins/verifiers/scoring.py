"""Reading scores out of a model, for the ``prm`` and ``self-eval`` verifiers: rows of
token ids run through it in batches, and a score is read at each requested position
(:class:`ModelReader`). Keys and values of encoded rows are reused through
:mod:`reason.plugins.backends.kv`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attrs import define

from reason.errors import VerifierError
from reason.plugins.backends.kv import KV, PrefixCache, output_cache, plain_cache, row_kv, splice, with_cache

DEFAULT_BATCH_SIZE = 8


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
        self.kv: PrefixCache[KV] | None = None
        if kv_tokens > 0 and head == "lm" and self.split and plain_cache(model):
            self.kv = PrefixCache(kv_tokens)

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
            cached, entry = self.kv.lookup(row.input_ids) if self.kv is not None else (0, None)
            # every read position must run through the model: its hidden state is needed
            hits.append((min(cached, min(row.positions)), entry))
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
                output = self.model(
                    input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position_ids.to(device)
                )
                logits = output.logits if hasattr(output, "logits") else output[0]
                if logits.shape[-1] != 2:
                    raise VerifierError(f"prm: the qwen format needs a two-class reward head, got {logits.shape[-1]} outputs")
                scores = torch.softmax(logits[bi, ci].float(), dim=-1)[:, 1]
            else:
                logits = self._lm_logits(rows, hits, past, ids, position_ids, mask, bi, ci).float()
                assert self.labels is not None  # checked in __init__ for head="lm"
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
            kwargs.update(use_cache=True, **with_cache(model.base_model, self._past(rows, hits, past, ids.shape[1])))
        output = model.base_model(input_ids=ids, attention_mask=mask, position_ids=position_ids, **kwargs)
        if self.kv is not None:
            total = mask.shape[1]
            for u, row in enumerate(rows):
                self.kv.insert(row.input_ids, row_kv(output_cache(output), u, len(row.input_ids), total))
        logits = model.get_output_embeddings()(output.last_hidden_state[bi, ci])
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap:
            logits = logits.div(cap).tanh().mul(cap)
        return logits

    def _past(self, rows: list[Row], hits: list, past: int, width: int) -> Any:
        """A cache holding, left-padded to ``past`` columns, each row's cached prefix."""
        # a row's tokens in the past columns: len(row.input_ids) - width of them
        return splice(self.model.config, [(len(row.input_ids) - width, entry) for row, (_, entry) in zip(rows, hits)], past)


def pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    return int(pad or 0)


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
