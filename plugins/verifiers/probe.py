"""The ``probe`` verifier: the policy's own hidden states say whether a path is going right.

A small head (:mod:`reason.plugins.learn.heads`), trained by ``reason learn`` on the
policy's rollouts over a training set, reads the policy's residual stream at a middle
layer and gives each step prefix a calibrated probability that the path reaches a right
answer. Step ``k``'s score reads the path up to the end of step ``k``; ``--aggregation
last`` (the default) makes the whole path's score the probability at its end.

With the ``transformers`` backend the states cost nothing extra: the verifier declares its
layers (``hidden_layers``), the backend keeps them from the decode passes it runs anyway
and hands them over with each step. Elsewhere (``vllm``, a server, a reflection's injected
text) the verifier runs the policy itself (transformers, in this process) up to the
head's deepest layer only, reusing the keys, values and states of earlier reads: a path
grown by a step runs its new tokens alone, and one prompt's samples share its prefix.

The head ships for the default model (``plugins/verifiers/probes/``); ``probe:HEAD.json``
or ``-o probe_head=HEAD.json`` names another. A head trained for other weights, or a
damaged file, is refused before anything is scored. The verifier sees what every
verifier sees, the prompt and the path: never a reference answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import reason
from reason import Score, ScoreRequest, Verifier
from reason.errors import UsageError
from reason.log import get_logger
from reason.options import Option

log = get_logger("reason")

SHIPPED = Path(__file__).parent / "probes"
"""Heads that ship with the package, one ``ALIAS.json`` card + ``ALIAS.safetensors`` per model."""


def shipped_head(model_spec: str | None) -> Path | None:
    """The packaged head for a packaged model alias (the default model when unset)."""
    from reason.plugins.backends import packaged
    from reason.plugins.backends.models import default_spec

    model = packaged.find(model_spec or default_spec())
    if model is None:
        return None
    card = SHIPPED / f"{model.alias}.json"
    return card if card.is_file() else None


class ProbeVerifier(Verifier):
    """Scores each step prefix with a probe head on the policy's hidden states."""

    class Options(reason.Options):
        prefix = "probe_"
        head = Option(str, None, help="the head's card (.json) [probe:HEAD, else the one shipped for --model]")
        # A tree search keeps a live path per node it may extend: under `reason eval`'s
        # default for N=8 on vLLM, 32 problems x 8 paths x ~400 tokens is ~100k tokens.
        # Below that the LRU evicts each path before its next step is scored, and every
        # read re-runs the whole path. Filled only when the verifier reads states itself
        # (not on the transformers backend): ~27 KB a token for the default model in
        # float32 (16 layers of keys and values, 3 of states), 3.5 GB when full.
        cache_tokens = Option(
            int,
            131_072,
            minimum=0,
            help="path tokens whose keys, values and states are kept, so a grown path runs only its new tokens",
        )
        capture = Option(bool, True, help="take the states the backend keeps while sampling; false: run the policy again")

    options: Options

    # Paths are scored one at a time (a forward pass each where the states were not
    # captured, seconds on a CPU), so a bigger call saves nothing and only keeps every
    # search in it, and a stop, waiting for the slowest path.
    max_batch = 8

    def __init__(self, config: Any, arg: str | None = None, **kwargs: Any) -> None:
        super().__init__(config, arg, **kwargs)
        head = arg or self.options.head
        path = Path(head).expanduser() if head else shipped_head(config.model)
        if path is None:
            raise UsageError(
                f"verifier probe: no probe head ships for model {config.model or 'default'}; train one with "
                "`reason learn` and pass --verifier probe:HEAD.json"
            )
        from reason.plugins.learn.heads import read_card

        self.head_path = path
        self.card = read_card(path)  # a missing or unreadable card fails now, not mid-run
        if self.options.capture:
            self.hidden_layers = tuple(self.card["features"]["layers"])
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any, Any, Any] | None = None
        self.seconds = 0.0
        self.captured_tokens = 0
        """Path tokens whose states came with the steps (no forward pass here)."""
        self.read_tokens = 0
        """Path tokens whose states this verifier read by running the policy."""

    def load(self) -> None:
        """Load the policy (shared with the transformers backend), check the head belongs
        to it, and build the reader (once; the first ``score`` does it)."""
        if self._loaded is not None:
            return
        from reason.plugins.backends.models import load_model, load_tokenizer, resolve_model, weights_sha256
        from reason.plugins.learn.features import HiddenStateReader
        from reason.plugins.learn.heads import load_head, spec_of

        source = resolve_model(self.config.model)
        head, card = load_head(self.head_path, weights_sha256(source), source.name)
        spec = spec_of(card)
        model = load_model(source, device=self.config.device, dtype=self.config.dtype)
        reader = HiddenStateReader(model, spec.layers, cache_tokens=self.options.cache_tokens)
        self._loaded = (head, spec, load_tokenizer(source), reader)
        log.debug("probe loaded", head=str(self.head_path), layers=spec.layers, kind=card["kind"])

    def score(self, requests: Sequence[ScoreRequest]) -> list[Score]:
        with self._lock:
            start = time.perf_counter()
            self.load()
            scores = [self._score_one(request) for request in requests]
            self.seconds += time.perf_counter() - start
            return scores

    def _score_one(self, request: ScoreRequest) -> Score:
        import torch

        from reason.plugins.backends.models import prompt_ids
        from reason.plugins.learn.features import pool
        from reason.plugins.learn.heads import calibrated

        assert self._loaded is not None
        head, spec, tokenizer, reader = self._loaded
        if not request.steps:
            return Score(step_scores=())
        path: list[int] = []
        ends: list[int] = []
        for step in request.steps:
            if step.token_ids:
                path += step.token_ids
            else:  # an injected step (a reflection) or a server's: text, no sampled ids
                path += tokenizer(step.text, add_special_tokens=False)["input_ids"]
                if step.finish_reason == "eos" and tokenizer.eos_token_id is not None:
                    path.append(tokenizer.eos_token_id)  # sampled ids end with it, and heads are fitted on those
            ends.append(len(path))
        if ends[-1] == 0:
            return Score(step_scores=tuple(0.5 for _ in request.steps))
        states = self._captured(request.steps)
        if states is None:
            prompt = prompt_ids(tokenizer, request.prompt)
            states = reader.read(prompt + path)[len(prompt) :]
            self.read_tokens += len(states)
        else:
            self.captured_tokens += len(states)
        with torch.inference_mode():
            if self.card["kind"] == "linear":
                logits = head(pool(states, 0, [max(1, e) for e in ends], spec.pooling)).tolist()
            else:
                logits = self._encoder_logits(head, states, ends)
        calibration = self.card.get("calibration", {})
        return Score(step_scores=tuple(calibrated(z, calibration) for z in logits))

    def _captured(self, steps: Sequence[Any]) -> Any:
        """The path's states as the backend captured them while sampling (``Step.hidden``),
        or ``None`` when some step has none (another backend, an injected reflection)."""
        import torch

        parts = [step.hidden for step in steps]
        if any(part is None or len(part) != len(step.token_ids) for part, step in zip(parts, steps)):
            return None
        return torch.cat(parts).float()

    def _encoder_logits(self, head: Any, states: Any, ends: Sequence[int]) -> list[float]:
        import torch

        max_tokens = int(self.card.get("config", {}).get("max_tokens", 384))
        out = []
        for k, end in enumerate(ends):
            end = max(1, end)
            begin = ends[k - 1] if k else 0
            x = states[:end].flatten(1)
            marker = torch.zeros(end, dtype=torch.long)
            marker[begin:end] = 1
            x, marker = x[-max_tokens:], marker[-max_tokens:]
            mask = torch.zeros(1, len(x), dtype=torch.bool)
            out.append(float(head(x[None], marker[None], mask)))
        return out

    def close(self) -> None:
        self._loaded = None
