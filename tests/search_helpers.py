"""Helpers for the search and reflection tests: a scripted backend whose token logprobs
follow the words it writes, and a verifier that reads scores from tags in the text.

- A token containing ``unsure`` gets a flat top-5 distribution (low confidence); every
  other token a peaked one. So Marco-o1's c_i is ~0.97 for sure tokens and ~0.22 for
  unsure ones, and DeepConf's C_i (-mean top-5 logprob) is 4.41 vs 1.7.
- ``TagVerifier`` scores a step by the ``<0.73>`` tag it contains (0.5 without one), so
  a test decides every score by what the script writes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import attrs
from scripted import _TOKEN, ScriptedBackend

from reason import Score, ScoreRequest, Verifier
from reason.registry import get_registry

SURE = (-0.05, (-0.05, -4.0, -5.0, -6.0, -7.0))
UNSURE = (-1.6, (-1.5, -1.6, -1.7, -1.8, -1.9))


def deepconf_c(top: Sequence[float]) -> float:
    return -sum(top) / len(top)


class WordBackend(ScriptedBackend):
    """ScriptedBackend with logprobs decided by each token's text (see module doc)."""

    def _completion(self, request, out, finish):
        completion = super()._completion(request, out, finish)
        tokens = _TOKEN.findall(completion.text)
        pairs = [UNSURE if "unsure" in token else SURE for token in tokens]
        return attrs.evolve(
            completion,
            logprobs=[lp for lp, _ in pairs],
            top_logprobs=[top for _, top in pairs],
        )


_TAG = re.compile(r"<(\d+(?:\.\d+)?)>")


class TagVerifier(Verifier):
    """Step score = the last ``<x>`` tag in the step's text, else 0.5."""

    def score(self, requests: Sequence[ScoreRequest]) -> list[Score]:
        out = []
        for request in requests:
            scores = []
            for step in request.steps:
                tags = _TAG.findall(step.text)
                scores.append(float(tags[-1]) if tags else 0.5)
            out.append(Score(step_scores=tuple(scores)))
        return out


def register_tag_verifier() -> None:
    get_registry().add("verifier", "test-tags", TagVerifier, plugin="tests")


def unregister_tag_verifier() -> None:
    get_registry().remove("verifier", "test-tags")


def tag_for(*parts: object) -> float:
    """A deterministic, well-spread score in [0.01, 0.99] for a key (no ties in practice)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()
    return round(0.01 + (int(digest[:8], 16) % 9800) / 10000, 4)


def depth_of(prompt: str) -> int:
    """How many scripted steps (``Step d``) the prompt's path already holds."""
    return prompt.count("Step ")


def step_script(one, finish_depth: int):
    """A script for step-wise searches made from ``one(request, index, depth)``, the step
    written at ``depth``: a request that stops at blank lines gets one step, a completion
    to the end every step left."""

    def script(request, index):
        depth = depth_of(request.prompt)
        if "\n\n" in request.params.stop:
            return one(request, index, depth)
        return "".join(one(request, index, d) for d in range(depth, finish_depth))

    return script


def tagged_steps_script(finish_depth: int = 4, same_first: bool = False):
    """A script for step-wise searches: every sample writes one unique step
    ``Step d #k <tag>`` (k counts samples, so every text and score differs); the step at
    depth ``finish_depth - 1`` gives a boxed answer and ends the text. With
    ``same_first`` every first step is identical (for de-duplication tests). Requests
    are answered as in ``step_script``."""
    counter = [0]

    def one(depth: int) -> str:
        counter[0] += 1
        k = counter[0]
        if same_first and depth == 0:
            return "Step 0 same <0.5>\n\n"
        if depth >= finish_depth - 1:
            return f"Step {depth} #{k} The answer is \\boxed{{{k}}} <{tag_for(k)}>"
        return f"Step {depth} #{k} <{tag_for(k)}>\n\n"

    return step_script(lambda request, index, depth: one(depth), finish_depth)
