"""Metrics of an evaluation run, computed from its records alone (no model, no I/O).

Metrics follow HF search-and-learn: from the N candidates of one run, maj@n, weighted@n
and naive@n for n = 1, 2, 4, ... N are computed on subsets of n candidates, here averaged
over every n-subset (or a fixed sample of them when there are many) rather than the first
n only, which removes the luck of the draw at small n; code tasks add the unbiased
pass@k of Chen et al. (2021).

Three kinds of number, never to be mixed up (:data:`METRIC_LABELS`): the strategy's own
choice (``accuracy``); what a selection rule would choose among n candidates (maj@n,
weighted@n, naive@n); and pass@n, an oracle upper bound (some candidate is right: no
strategy can choose by it, since it needs the grader's hidden tests).
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Sequence
from itertools import combinations
from typing import Any

from reason.answers import choose

MAX_SUBSETS = 256
"""Above this many n-subsets, metrics average over a fixed random sample of them."""

METRIC_LABELS = {
    "accuracy": "the strategy's choice: the answer the search returned",
    "maj": "maj@n: majority vote over n candidates",
    "weighted": "weighted@n: the answer whose candidates' verifier scores sum highest among n",
    "naive": "naive@n: the single best verifier score among n candidates",
    "pass": "pass@n: oracle upper bound, some of n candidates is right (needs the grader's tests; not a choice)",
}
"""What each reported number is (``summary.json`` carries it as ``labels``)."""
ORACLE_FAMILIES = ("pass",)
"""Metric families that are upper bounds, not something a strategy can reach by choosing."""

# --- budgets and subsets ----------------------------------------------------------------


def budgets(n: int) -> list[int]:
    """The sample budgets a run of ``n`` is measured at: 1, 2, 4, ... and ``n`` itself."""
    out, k = [], 1
    while k < n:
        out.append(k)
        k *= 2
    out.append(max(n, 1))
    return out


def subsets(size: int, k: int, seed: str = "") -> list[tuple[int, ...]]:
    """Index subsets of ``k`` out of ``size`` candidates: all of them, or ``MAX_SUBSETS``
    drawn with a seed derived from ``seed`` (the task id) so reruns agree."""
    k = min(k, size)
    if k <= 0:
        return [()]
    if math.comb(size, k) <= MAX_SUBSETS:
        return list(combinations(range(size), k))
    rng = random.Random(zlib.crc32(f"{seed}|{size}|{k}".encode()))
    return [tuple(sorted(rng.sample(range(size), k))) for _ in range(MAX_SUBSETS)]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021): the chance that at least one of ``k`` programs
    drawn without replacement from ``n`` with ``c`` correct is correct."""
    if k > n:
        k = n
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


# --- choosing within a subset: reason.answers.choose, the searches' own rules ------------

RULES = {"maj": "majority", "weighted": "weighted", "naive": "naive"}
"""Metric family -> the :func:`reason.answers.choose` rule it measures (self-consistency's
vote, best-of-N's weighted and naive choices)."""


def choice(cands: Sequence[dict[str, Any]], subset: Sequence[int], family: str) -> int | None:
    """The candidate (an index into ``cands``) the rule of ``family`` picks among
    ``subset``, from the recorded answers, groups and scores."""
    picked = [cands[i] for i in subset]
    index, _ = choose(
        [c.get("answer") for c in picked],
        [c.get("score") for c in picked],
        RULES[family],
        groups=[c.get("group") for c in picked],
    )
    return subset[index] if index is not None else None


def _correct(cands: Sequence[dict[str, Any]], index: int | None) -> float:
    return 1.0 if index is not None and cands[index].get("correct") else 0.0


def problem_metrics(record: dict[str, Any], n: int, scored: bool = True) -> dict[str, float]:
    """One problem's expected accuracy of each rule at budget ``n`` (mean over subsets).
    ``scored=False`` (no candidate of the run has a score) leaves out the rules that
    choose by score."""
    cands = record.get("candidates") or []
    out: dict[str, float] = {}
    rules = ["naive"] if record.get("kind") == "code" else ["maj", "weighted", "naive"]
    if not scored:
        rules = [rule for rule in rules if rule == "maj"]
    picks = subsets(len(cands), n, record.get("task_id", "")) if cands else []
    for rule in rules:
        if not picks or not cands:
            out[f"{rule}@{n}"] = 0.0
            continue
        out[f"{rule}@{n}"] = sum(_correct(cands, choice(cands, s, rule)) for s in picks) / len(picks)
    if record.get("kind") == "code":
        correct = sum(1 for c in cands if c.get("correct"))
        out[f"pass@{n}"] = pass_at_k(len(cands), correct, n) if cands else 0.0
    return out


def compute_metrics(records: Sequence[dict[str, Any]], n: int) -> dict[str, Any]:
    """Every metric of a run, averaged over its problems.

    Keys: ``accuracy`` (the strategy's own choice), ``maj@k`` / ``weighted@k`` /
    ``naive@k`` (and ``pass@k`` for code; the score rules only when some candidate has a
    score) for k in :func:`budgets`, ``tokens@k`` (generated
    tokens per problem at that budget: the run's, scaled by k/n), ``tokens_per_problem``,
    ``prompt_tokens_per_problem``, ``encoded_tokens_per_problem`` and ``encoded_share``
    (the prompt tokens the engine encoded, and their share of those sent: what re-sending
    paths cost), ``seconds_per_problem`` (wall clock, model loading
    excluded), ``latency_per_problem`` (mean time from start to answer of one problem).

    For best-of-n and self-consistency the candidates are independent samples, so a
    k-subset is exactly a k-sample run and ``tokens@k`` its cost. For step-level searches
    (beam, DVTS, MCTS) the candidates are the final paths of one search: ``@k`` votes over
    k of them and ``tokens@k`` only pro-rates that search's cost; their true budget point
    is ``@n`` (run each N separately to trace their curve).

    ``n`` is the config's; when no problem returned that many candidates (greedy returns
    one, whatever ``n`` says), the run is measured at the most any problem returned, so a
    greedy run is not reported as ``@4`` at a quarter of its tokens."""
    if records:
        n = max(1, min(n, max(len(r.get("candidates") or []) for r in records)))
    count = len(records)
    summary: dict[str, Any] = {"problems": count, "n": n, "budgets": budgets(n)}
    if not count:
        return summary
    summary["accuracy"] = sum(1 for r in records if r.get("correct")) / count
    summary["answered"] = sum(1 for r in records if r.get("answer") is not None) / count
    tokens = sum(r["usage"]["completion_tokens"] for r in records) / count
    summary["tokens_per_problem"] = tokens
    prompt = sum(r["usage"]["prompt_tokens"] for r in records)
    summary["prompt_tokens_per_problem"] = prompt / count
    if all("encoded_tokens" in r["usage"] for r in records):  # records written before it was counted lack it
        encoded = sum(r["usage"]["encoded_tokens"] for r in records)
        summary["encoded_tokens_per_problem"] = encoded / count
        summary["encoded_share"] = encoded / prompt if prompt else 0.0
    summary["seconds_per_problem"] = sum(r.get("wall_seconds", r["seconds"]) for r in records) / count
    summary["latency_per_problem"] = sum(r["seconds"] for r in records) / count
    summary["candidates_per_problem"] = sum(len(r.get("candidates") or []) for r in records) / count
    totals: dict[str, float] = {}
    scored = any(c.get("score") is not None for r in records for c in r.get("candidates") or [])
    for k in budgets(n):
        for record in records:
            for key, value in problem_metrics(record, k, scored).items():
                totals[key] = totals.get(key, 0.0) + value
        summary[f"tokens@{k}"] = tokens * k / n
    summary.update({key: value / count for key, value in totals.items()})
    if scored:
        summary.update(score_quality(records))
    return summary


# --- how well the verifier's scores tell right from wrong ------------------------------------


def auroc(right: Sequence[float], wrong: Sequence[float]) -> float | None:
    """P(a right candidate's score > a wrong one's), ties counting half (Mann-Whitney);
    ``None`` without both kinds."""
    if not right or not wrong:
        return None
    ranked = sorted([(s, 1) for s in right] + [(s, 0) for s in wrong])
    rank_sum, i = 0.0, 0
    while i < len(ranked):  # average ranks over ties
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        rank_sum += sum(label for _, label in ranked[i:j]) * (i + j + 1) / 2
        i = j
    n1, n0 = len(right), len(wrong)
    return (rank_sum - n1 * (n1 + 1) / 2) / (n1 * n0)


def average_precision(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """PR-AUC as average precision: the mean precision at the rank of each right one."""
    positives = sum(1 for label in labels if label)
    if not positives:
        return None
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    hits, total = 0, 0.0
    for rank, i in enumerate(order, 1):
        if labels[i]:
            hits += 1
            total += hits / rank
    return total / positives


def score_quality(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How the candidates' scores separate right from wrong: ``score_auroc`` over every
    candidate of the run, and ``score_auroc_within`` averaged over the problems that have
    both right and wrong candidates (what choosing among one problem's candidates needs;
    pooled AUROC also rewards telling easy problems from hard ones), with their count."""
    right, wrong, within = [], [], []
    for record in records:
        mine = [(c["score"], bool(c.get("correct"))) for c in record.get("candidates") or [] if c.get("score") is not None]
        r = [s for s, ok in mine if ok]
        w = [s for s, ok in mine if not ok]
        right += r
        wrong += w
        value = auroc(r, w)
        if value is not None:
            within.append(value)
    return {
        "score_auroc": auroc(right, wrong),
        "score_auroc_within": sum(within) / len(within) if within else None,
        "problems_mixed": len(within),
    }


def metric_names(summary: dict[str, Any]) -> list[str]:
    """The metric families present in a summary, in display order (oracles last)."""
    return [m for m in ("maj", "weighted", "naive", "pass") if f"{m}@1" in summary]


def count_unverified(records: Sequence[dict[str, Any]], verifier: Any) -> int | None:
    """Code problems whose candidates got no pass/fail verdict from the verifier (the
    ``sandbox`` verifier on a task without public tests); ``None`` when the run has no
    code problems recorded with verdicts or its verifier gives none at all."""
    code = [r for r in records if r.get("kind") == "code" and "verified" in r]
    if not code:
        return None
    exact = any(r["verified"] for r in code) or str(verifier or "").split(":")[0] == "sandbox"
    return sum(1 for r in code if not r["verified"]) if exact else None
