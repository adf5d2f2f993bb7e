"""Reusing keys and values (KV) of encoded token prefixes, for every in-process model user:
the transformers backend's decode loop and the verifiers that read a scoring model
(``prm``, ``self-eval``).

- :class:`PrefixCache`: an LRU of per-sequence KV caches keyed by the token ids they encode.
- :func:`plain_cache`: whether a model's cache can be spliced at all.
- :func:`splice`: a left-padded ``DynamicCache`` built from cached per-row prefixes, so a
  batch runs only the tokens after them.
- :func:`row_kv`: one row's keys and values out of a batch cache, to put in the LRU.
- :func:`pad_left`: keys or values left-padded to a wider batch; :func:`left_padded_mask`
  the attention mask of such a batch.
- :func:`with_cache`, :func:`output_cache`: a forward pass's KV cache argument and result
  under the name the installed transformers uses.
"""

from __future__ import annotations

import functools
import inspect
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    import torch

KV = list[tuple["torch.Tensor", "torch.Tensor"]]
"""Per layer, ``(keys, values)`` of shape ``[heads, length, head_dim]``."""


@functools.cache
def _cache_argument(forward: Any) -> str:
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def with_cache(model: Any, cache: Any) -> dict[str, Any]:
    """The keyword that passes ``cache`` to ``model``'s forward: ``cache`` where the
    installed transformers names it so (newer 5.x, which warns on the old name),
    ``past_key_values`` before."""
    return {_cache_argument(type(model).forward): cache}


def output_cache(output: Any) -> Any:
    """The KV cache a forward pass returned, under either name (see :func:`with_cache`)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


E = TypeVar("E")
"""What a :class:`PrefixCache` entry holds: a :data:`KV` (the backend, the model
verifiers), or a KV with the hidden states read alongside (the probe's reader)."""


class PrefixCache(Generic[E]):
    """An LRU of per-sequence KV caches keyed by the token ids they encode.

    Each entry holds, per layer, ``(keys, values)`` of shape ``[heads, length, head_dim]``.
    ``lookup`` returns the longest common prefix with any entry (any prefix of an entry is
    usable: keys of token ``i`` depend only on tokens ``0..i``). Entries whose ids are a
    prefix of a newer entry are dropped as redundant. The total is bounded in tokens.
    """

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.tokens = 0
        self._entries: OrderedDict[tuple[int, ...], E] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: Sequence[int]) -> tuple[int, E | None]:
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

    def insert(self, ids: Sequence[int], entry: E) -> None:
        ids = tuple(ids)
        if not ids or len(ids) > self.max_tokens:
            return
        for key in list(self._entries):
            if len(key) >= len(ids) and key[: len(ids)] == ids:
                self._entries.move_to_end(key)  # already covered by a longer entry
                return
            if len(key) < len(ids) and ids[: len(key)] == key:
                self._drop(key)
        self._entries[ids] = entry
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


def plain_cache(model: Any) -> bool:
    """Whether the model's cache is plain full attention (no sliding window, no recurrent
    state): only then can cached prefixes be spliced in, and caches be trimmed."""
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        probe = DynamicCache(config=model.config)
        return all(type(layer) is DynamicLayer for layer in probe.layers)
    except Exception:
        return False


def splice(config: Any, prefixes: Sequence[tuple[int, KV | None]], past: int) -> Any:
    """A ``DynamicCache`` of ``past`` columns for a left-padded batch: ``prefixes[u] =
    (used, kv)`` puts the first ``used`` cached tokens of row ``u`` in its last ``used``
    columns (zeros, masked out, before them). Empty when ``past <= 0``."""
    from transformers import DynamicCache

    if past <= 0:
        return DynamicCache(config=config)
    # the longest row reuses all `past` columns, so some row has used > 0 and a kv
    reference = next(kv for used, kv in prefixes if used > 0 and kv is not None)
    layers = []
    for layer, (ref_keys, ref_values) in enumerate(reference):
        heads, _, dim = ref_keys.shape
        keys = ref_keys.new_zeros((len(prefixes), heads, past, dim))
        values = ref_values.new_zeros((len(prefixes), heads, past, dim))
        for u, (used, kv) in enumerate(prefixes):
            if used > 0:
                assert kv is not None
                keys[u, :, past - used :] = kv[layer][0][:, :used]
                values[u, :, past - used :] = kv[layer][1][:, :used]
        layers.append((keys, values))
    return DynamicCache(layers, config=config)


def row_kv(cache: Any, row: int, length: int, width: int) -> KV:
    """Row ``row``'s keys and values for its last ``length`` of ``width`` columns (the
    tokens it encoded; the columns before them are padding), copied out of the batch."""
    return [
        (layer.keys[row, :, width - length :].clone(), layer.values[row, :, width - length :].clone()) for layer in cache.layers
    ]


def pad_left(kv: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad ``[rows, heads, length, dim]`` keys or values with zeros to ``width``."""
    import torch.nn.functional as F

    missing = width - kv.shape[2]
    return F.pad(kv, (0, 0, missing, 0)) if missing else kv


def left_padded_mask(lengths: Sequence[int], width: int) -> torch.Tensor:
    """The attention mask of rows of ``lengths`` tokens left-padded to ``width`` columns."""
    import torch

    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, width - length :] = 1
    return mask


def trim_padding(cache: Any, mask: torch.Tensor) -> torch.Tensor:
    """Drop the leading columns of a plain cache (and its mask) that are padding in every row."""
    used = mask.any(dim=0).nonzero()
    first = int(used[0]) if len(used) else 0
    if first == 0:
        return mask
    for layer in cache.layers:
        layer.keys = layer.keys[:, :, first:]
        layer.values = layer.values[:, :, first:]
    return mask[:, first:]
