"""How sequences enter the transformers decode loop's batch (:mod:`.transformers_loop`),
and what a finished one leaves behind. A newcomer is

- *prefilled*: the distinct prompts of the newcomers encoded in one forward pass of their
  own, each after the longest prefix the prefix cache holds (:meth:`Admission.admit`);
- *joined*: where its prompt is cached but for the last token (the next step of a path,
  another sample of a prompt one sample of which is done), stacked onto the batch as it
  is, to feed that token in the next decode pass with every other row: no pass of its
  own (:meth:`Admission.join`);
- *placed*: joined into a finished row's place, in place (:meth:`Admission.place`):
  taking a row out and stacking one on would each copy the whole batch's keys and values.

A finished row's keys and values go to the prefix cache (:meth:`Admission.remember`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import kv
from .kv import PrefixCache, output_cache, with_cache
from .transformers_sequences import BackendStats, Batch, LoadedModel, SequenceState

if TYPE_CHECKING:
    import torch


class Admission:
    """The decode loop's way in (see the module docstring), over its loaded model, its
    prefix cache and its counters."""

    def __init__(self, loaded: LoadedModel, prefix_cache: PrefixCache[kv.KV], stats: BackendStats) -> None:
        self.loaded, self.prefix_cache, self.stats = loaded, prefix_cache, stats

    @property
    def reuse(self) -> bool:
        """Whether cached prefixes are reused at all (plain caches, a cache budget)."""
        return self.loaded.plain_cache and self.prefix_cache.max_tokens > 0

    def join_hit(self, ids: tuple[int, ...]) -> tuple[int, kv.KV] | None:
        """The cached prefix a prompt joins on without a pass (its length and keys and
        values: all but the last token, at least), or ``None`` where it needs a prefill."""
        if not self.reuse or len(ids) < 2:
            return None
        used, entry = self.prefix_cache.lookup(ids)
        return (used, entry) if entry is not None and used >= len(ids) - 1 else None

    def join_hits(self, seqs: Iterable[SequenceState], width: int | None = None) -> list[tuple[int, kv.KV]]:
        """The :meth:`join_hit` of each of the leading ``seqs`` that can join without a
        pass (with ``width``, only while their cached prefix fits it): each looked up once,
        for the caller to hand to :meth:`admit` or :meth:`place`."""
        hits: list[tuple[int, kv.KV]] = []
        for seq in seqs:
            if width is not None and len(seq.prompt_ids) - 1 > width:
                break
            hit = self.join_hit(seq.prompt_ids)
            if hit is None:
                break
            hits.append(hit)
        return hits

    def admit(self, batch: Batch | None, newcomers: list[SequenceState], hits: list[tuple[int, kv.KV]] | None = None) -> Batch:
        """The batch with ``newcomers`` stacked under its rows (a new batch when there is
        none): joined where every one of them can be, else prefilled. ``hits``: their
        :meth:`join_hit`, where the caller has looked them up already."""
        import torch

        if batch is not None:
            hits = self.join_hits(newcomers) if hits is None else hits
            if len(hits) == len(newcomers):
                return self.join(batch, newcomers, hits)
        start = time.perf_counter()
        prompts: dict[tuple[int, ...], int] = {}
        for seq in newcomers:
            prompts.setdefault(seq.prompt_ids, len(prompts))
        cache, mask, logits, reused = self.prefill(list(prompts))
        seen: set[int] = set()
        for seq in newcomers:  # samples after a prompt's first share its pass
            u = prompts[seq.prompt_ids]
            seq.cached_tokens = len(seq.prompt_ids) if u in seen else reused[u]
            seen.add(u)
        if len(prompts) != len(newcomers):  # samples of one prompt share its prefill
            rows = torch.tensor([prompts[s.prompt_ids] for s in newcomers], device=self.loaded.device)
            for layer in cache.layers:
                layer.batch_select_indices(rows)
            mask, logits = mask[rows], logits[rows]
        lengths = [len(s.prompt_ids) for s in newcomers]
        joined = Batch(rows=newcomers, cache=cache, mask=mask, logits=logits, lengths=lengths)
        if batch is not None:
            joined = batch.stack(joined)
        self.stats.prefill_seconds += time.perf_counter() - start
        return joined

    def join(self, batch: Batch, newcomers: list[SequenceState], hits: list[tuple[int, kv.KV]]) -> Batch:
        """Stack ``newcomers`` onto the batch without a forward pass (``hits``: their
        :meth:`join_hit`): each row holds its prompt's cached keys and values and feeds
        the last token in the next decode pass, which gives it its first logits."""
        start = time.perf_counter()
        prefixes = [self._joining(seq, entry) for seq, (_, entry) in zip(newcomers, hits)]
        lengths = [n for n, _ in prefixes]
        cache = kv.splice(self.loaded.model.config, prefixes, max(lengths))
        mask = kv.left_padded_mask(lengths, max(lengths)).to(self.loaded.device)
        logits = batch.logits.new_zeros((len(newcomers), batch.logits.shape[1]))  # none until that pass
        joined = batch.stack(Batch(rows=newcomers, cache=cache, mask=mask, logits=logits, lengths=lengths))
        self.stats.prefill_seconds += time.perf_counter() - start
        return joined

    def place(self, batch: Batch, row: int, seq: SequenceState, hit: tuple[int, kv.KV]) -> None:
        """Put ``seq`` (``hit``: its :meth:`join_hit`, no wider than the batch) into
        ``row`` of the batch, whose sequence is done: only that row's keys, values and
        mask are written. The caller feeds the row ``seq.feed`` in the next decode pass."""
        width = batch.mask.shape[1]
        used, entry = self._joining(seq, hit[1])
        for layer, (keys, values) in zip(batch.cache.layers, entry):
            for cache, cached in ((layer.keys, keys), (layer.values, values)):
                cache[row, :, : width - used] = 0
                cache[row, :, width - used :] = cached[:, :used]
        batch.mask[row] = 0
        batch.mask[row, width - used :] = 1
        batch.rows[row], batch.lengths[row] = seq, used

    def _joining(self, seq: SequenceState, entry: kv.KV) -> tuple[int, kv.KV]:
        """Make ``seq`` a row that feeds its prompt's last token in the next decode pass.
        Returns the cached tokens before it and their keys and values (``entry``, its
        :meth:`join_hit`'s)."""
        seq.feed, seq.cached_tokens = seq.prompt_ids[-1], len(seq.prompt_ids) - 1
        self.stats.prefill_tokens += 1  # the last prompt token runs in the decode pass
        self.stats.reused_tokens += seq.cached_tokens
        self.stats.joined_rows += 1
        return seq.cached_tokens, entry

    def prefill(self, prompts: list[tuple[int, ...]]) -> tuple[Any, torch.Tensor, torch.Tensor, list[int]]:
        """Encode the distinct prompts of a chunk in one forward pass, reusing cached
        prefixes. Returns the batch's cache, attention mask, last-position logits and each
        prompt's tokens that were not encoded (taken from the prefix cache).

        Layout: row ``u`` (prompt length ``T_u``) is left-padded to the longest prompt
        ``T``. The forward pass encodes the last ``S`` columns, where ``S`` is the longest
        uncached suffix; everything before them comes from the prefix cache. A row whose
        cached prefix is longer than ``T_u - S`` simply recomputes a few cached tokens:
        they cost nothing extra, as the batch computes ``S`` columns for every row anyway.
        """
        import torch

        model = self.loaded.model
        hits = []
        for ids in prompts:
            cached, entry = self.prefix_cache.lookup(ids) if self.reuse else (0, None)
            hits.append((min(cached, len(ids) - 1), entry))  # the last token must run: we need its logits
        total = max(len(ids) for ids in prompts)
        suffix = max(len(ids) - cached for ids, (cached, _) in zip(prompts, hits))
        past = total - suffix
        rows = len(prompts)
        # row u holds len(ids) - suffix cached tokens left of the encoded columns
        cache = kv.splice(model.config, [(len(ids) - suffix, entry) for ids, (_, entry) in zip(prompts, hits)], past)
        input_ids = torch.full((rows, suffix), self.loaded.pad_id, dtype=torch.long)
        positions = torch.zeros((rows, suffix), dtype=torch.long)
        mask = kv.left_padded_mask([len(ids) for ids in prompts], total)
        reused = []
        for u, ids in enumerate(prompts):
            first = max(0, len(ids) - suffix)
            width = len(ids) - first
            input_ids[u, suffix - width :] = torch.tensor(ids[first:])
            positions[u, suffix - width :] = torch.arange(first, len(ids))
            self.stats.prefill_tokens += width
            self.stats.reused_tokens += first
            reused.append(first)
        mask = mask.to(self.loaded.device)
        out = model(
            input_ids=input_ids.to(self.loaded.device),
            attention_mask=mask,
            position_ids=positions.to(self.loaded.device),
            **with_cache(model, cache),
            use_cache=True,
            logits_to_keep=1,
        )
        self.stats.forward_passes += 1
        return output_cache(out), mask, out.logits[:, -1, :], reused

    def remember(self, seq: SequenceState, cache: Any, row: int, length: int, width: int) -> None:
        """Put a finished row's keys and values (prompt + generated tokens that ran
        through the model) into the prefix cache."""
        if not self.reuse:
            return
        ids = (seq.prompt_ids + tuple(seq.token_ids))[:length]
        self.prefix_cache.insert(ids, kv.row_kv(cache, row, length, width))
