"""The policy's own hidden states, read at the layers a probe needs.

A probe (:mod:`.heads`) reads the frozen policy's residual stream at a few middle layers:
there, whether a path is going right is more visible than in the last layer (measured on
GSM8K train, see the README's probe section). :class:`HiddenStateReader` runs a row
(prompt + path token ids) through the policy only *up to the deepest layer asked for*:
a forward hook on that layer stops the pass, so the layers above it, the final norm and
the LM head (a quarter of a 0.5B model's work) never run. The hooks act only in the
reading thread, so the same model can keep decoding for the backend meanwhile. It keeps the keys, values and
states of every row it has read in an LRU bounded in tokens, so a path grown by one step
(beam search, every round) or eight samples of one prompt run only their new tokens.

:class:`FeatureSpec` says which layers and how they are pooled; it is saved with every
head, so a head is always fed what it was trained on.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from attrs import field, frozen

from reason.errors import VerifierError
from reason.plugins.backends.kv import KV, PrefixCache, with_cache
from reason.types import int_tuple

if TYPE_CHECKING:
    import torch


POOLINGS = ("mean", "mean+last", "mean+step")
"""How a step prefix's token states become one vector (see :attr:`FeatureSpec.pooling`)."""


def pooled_width(pooling: str) -> int:
    """How many hidden-state vectors :func:`pool` concatenates per layer."""
    return 1 if pooling == "mean" else 2


@frozen
class FeatureSpec:
    """What a head reads. ``layers`` index the residual stream as transformers'
    ``hidden_states`` do: 0 is the embeddings, ``k`` the output of block ``k``."""

    layers: tuple[int, ...] = field(converter=int_tuple)
    pooling: str = "mean"
    """How a step's prefix becomes one vector: ``mean`` over the path's tokens so far, or
    ``mean+last`` (that mean and the last token's state, concatenated) or ``mean+step``
    (that mean and the mean over the step's own tokens: paths that share all but their last
    step, a beam's siblings, differ mostly there)."""

    def __attrs_post_init__(self) -> None:
        if not self.layers or min(self.layers) < 1:
            raise ValueError(f"layers must be block outputs >= 1, got {self.layers}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}: {', '.join(POOLINGS)}")

    def to_dict(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "pooling": self.pooling}


class _Stop(Exception):
    """Raised by the hook on the deepest layer needed: the rest of the forward is skipped."""


def decoder_layers(model: Any) -> Any:
    """The list of decoder blocks of an HF causal LM (``model.model.layers`` and kin)."""
    base = getattr(model, "base_model", model)
    for owner in (base, getattr(base, "model", None), getattr(base, "decoder", None)):
        layers = getattr(owner, "layers", None) if owner is not None else None
        if layers is not None and len(layers):
            return layers
    raise VerifierError(f"probe: cannot find the decoder layers of {type(model).__name__}")


class HiddenStateReader:
    """Per-token hidden states of rows of token ids at ``layers``, one row at a time.

    On a CPU one row of a few hundred tokens already fills the matrix units, so rows are
    not padded into batches; reuse of shared prefixes is what saves the work.
    """

    def __init__(self, model: Any, layers: Sequence[int], cache_tokens: int = 16_384) -> None:
        self.model = model
        self.layers = tuple(sorted(set(layers)))
        blocks = decoder_layers(model)
        if self.layers[-1] > len(blocks):
            raise VerifierError(f"probe: layer {self.layers[-1]} asked for, the model has {len(blocks)}")
        self.blocks = blocks
        _install_hooks(blocks, self.layers)
        self.base = getattr(model, "base_model", model)
        self.device = next(model.parameters()).device
        self.cache: PrefixCache[tuple[KV, torch.Tensor]] | None = PrefixCache(cache_tokens) if cache_tokens > 0 else None
        self.tokens = 0
        self.reused = 0

    def read(self, ids: Sequence[int]) -> Any:
        """``[len(ids), len(layers), hidden]`` float32 states for every token of ``ids``."""
        import torch

        ids = list(ids)
        hit, entry = self.cache.lookup(ids) if self.cache is not None else (0, None)
        hit = min(hit, len(ids) - 1)  # at least one token runs, so the hooks fire
        kv, old_states = entry if entry is not None else (None, None)
        deepest = self.layers[-1]
        past = _cache_from(self.model.config, kv, hit)
        capture = _Capture(set(self.layers), deepest)
        _active.capture = capture
        try:
            with torch.inference_mode():
                self.base(
                    input_ids=torch.tensor([ids[hit:]], device=self.device),
                    position_ids=torch.arange(hit, len(ids), device=self.device).unsqueeze(0),
                    **with_cache(self.base, past),
                    use_cache=True,
                )
        except _Stop:
            pass
        finally:
            _active.capture = None
        new = torch.stack([capture.states[k] for k in self.layers], dim=1).cpu()
        states = torch.cat([old_states[:hit], new]) if hit and old_states is not None else new
        self.tokens += len(ids) - hit
        self.reused += hit
        if self.cache is not None:
            layers = [(layer.keys[0].clone(), layer.values[0].clone()) for layer in past.layers[:deepest]]
            self.cache.insert(ids, (layers, states))  # the states travel with the kv
        return states


class _Capture:
    def __init__(self, layers: set[int], deepest: int) -> None:
        self.layers, self.deepest = layers, deepest
        self.states: dict[int, Any] = {}


# The hooks stay on the model for good and act only for the thread that is reading: the
# model may be the transformers backend's own copy, decoding in its thread at the same
# time, and adding or removing hooks around every read would race with its forwards.
_active = threading.local()
_hooked: dict[int, set[int]] = {}
_hook_lock = threading.Lock()


def _install_hooks(blocks: Any, layers: Sequence[int]) -> None:
    with _hook_lock:
        done = _hooked.setdefault(id(blocks), set())
        for index in layers:
            if index not in done:
                blocks[index - 1].register_forward_hook(_hook(index))
                done.add(index)


def _hook(index: int) -> Any:
    def capture(module: Any, args: Any, output: Any) -> None:
        active = getattr(_active, "capture", None)
        if active is None or index not in active.layers:
            return
        active.states[index] = (output[0] if isinstance(output, tuple) else output)[0].float()
        if index == active.deepest:
            raise _Stop

    return capture


def _cache_from(config: Any, kv: Any, used: int) -> Any:
    """A one-row ``DynamicCache`` holding the first ``used`` tokens of a cached entry (only
    the layers that ran: the others are never reached)."""
    from transformers import DynamicCache

    if not used or kv is None:
        return DynamicCache(config=config)
    return DynamicCache([(k[None, :, :used], v[None, :, :used]) for k, v in kv], config=config)


def pool(states: Any, start: int, ends: Sequence[int], pooling: str) -> Any:
    """One feature vector per step end: pooled states of tokens ``start..end`` (the path
    so far, prompt excluded). ``states``: ``[tokens, layers, hidden]``; returns
    ``[len(ends), features]``."""
    import torch

    flat = states.flatten(1)  # [tokens, layers*hidden]
    sums = torch.cumsum(flat[start:], dim=0)
    rows = []
    previous = 0  # tokens of the path before this step
    for end in ends:
        n = max(1, end - start)
        row = sums[n - 1] / n
        if pooling == "mean+last":
            row = torch.cat([row, flat[start + n - 1]])
        elif pooling == "mean+step":
            begin = min(previous, n - 1)  # an empty step reads its last token
            row = torch.cat([row, (sums[n - 1] - (sums[begin - 1] if begin else 0)) / (n - begin)])
        rows.append(row)
        previous = n
    return torch.stack(rows)
