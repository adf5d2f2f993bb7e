"""Marco-o1's confidence score, from the logprobs the backend already returned.

For each generated token, c_i = exp(p(t_i)) / sum_{k=1..5} exp(p(t_k)): the chosen
token's probability renormalised over the top-k alternatives at that position. A step's
score is the mean c_i over its tokens; no extra model call is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from reason import Score, ScoreRequest, Step, Verifier


def token_confidence(logprob: float, top: Sequence[float]) -> float:
    """c_i for one token. The chosen token is counted in the denominator even when it is
    not among the top-k (sampling at T>0 can pick a token outside them)."""
    if not top:
        return math.exp(logprob)
    alternatives = list(top)
    if all(abs(logprob - alt) > 1e-6 for alt in alternatives):
        alternatives = alternatives[: max(len(alternatives) - 1, 0)] + [logprob]
    peak = max(alternatives)
    denominator = sum(math.exp(alt - peak) for alt in alternatives)
    return math.exp(logprob - peak) / denominator


def step_confidence(step: Step) -> float | None:
    """Mean token confidence of a step; ``None`` for steps without logprobs (injected)."""
    if not step.logprobs:
        return None
    values = [token_confidence(lp, top) for lp, top in zip(step.logprobs, step.top_logprobs or [()] * len(step.logprobs))]
    return sum(values) / len(values)


class ConfidenceVerifier(Verifier):
    """Scores each step by its mean token confidence (Marco-o1)."""

    def score(self, requests: Sequence[ScoreRequest]) -> list[Score]:
        results = []
        for request in requests:
            scores: list[float] = []
            for step in request.steps:
                value = step_confidence(step)
                # An injected step (a reflection) carries no logprobs: it inherits the
                # previous score so aggregation is not skewed by text the model never chose.
                scores.append(value if value is not None else (scores[-1] if scores else 1.0))
            results.append(Score(step_scores=tuple(scores)))
        return results
