"""Compute-optimal scaling (Snell et al., 2408.03314): spend test-time compute where it
helps, per problem.

1. *Probe*: sample ``probe`` (2) cheap solutions (at most ``probe_tokens`` tokens,
   default the run's ``max_tokens``) and score them with the verifier. Difficulty = 1 - mean score (without a verifier: 1 - the majority answer's
   share of the probe samples).
2. *Choose*: the first row of ``table`` whose ``max_difficulty`` is >= that difficulty
   gives the strategy and N (any other :class:`~reason.config.Config` field in the row,
   e.g. ``verifier``, is applied too, and ``beam_width``, ``max_steps`` and ``weighted``
   set those options of the row's search; not the backend's fields, since
   the strategy runs on the run's model, nor ``options``, which are the run's).
3. *Run* the chosen strategy on the same tree (through ``ctx.run_policy``, which asks
   the runtime for the policy and its components) and return its answer. The probe's
   cost counts in the solve's usage; its samples are recorded in ``meta["probe"]``.
   Every row's config is declared in ``sub_configs``, so its search names and options
   are checked, and its verifier built, before the run starts.

A table in a recipe::

    [options]
    probe = 2
    table = [
      { max_difficulty = 0.3, search = "best-of-n", n = 4 },
      { max_difficulty = 0.5, search = "dvts", n = 8 },
      { max_difficulty = 1.0, search = "beam", n = 8 },
    ]

**Fitting the table from an eval run.** Pick the candidate settings (e.g. best-of-n,
beam, dvts at N = 4, 8, 16). Evaluate each on a development set through this policy
with a one-row table that forces it, e.g.
``reason eval --search compute-optimal --seed 0 -o 'table=[{max_difficulty=1.0, search="beam", n=8}]'``:
every solution's ``meta`` then holds the probe's ``difficulty`` (identical across runs
with the same seed) next to the run's correctness and usage. Collect one record per
(task, setting) -- ``{"difficulty", "search", "n", "correct", "tokens"}`` -- and call
:func:`fit_table`: it cuts the difficulties into equal-count bins and keeps, per bin, the
setting with the best accuracy (fewest tokens on ties, optionally within a token budget).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import reason
from reason import Config, SearchContext, SearchOutcome, SearchPolicy
from reason.answers import vote
from reason.component_cache import BACKEND_FIELDS
from reason.config import MOVED
from reason.errors import UsageError
from reason.options import Option

DEFAULT_TABLE: tuple[dict[str, Any], ...] = (
    {"max_difficulty": 0.25, "search": "best-of-n"},
    {"max_difficulty": 0.45, "search": "dvts"},
    {"max_difficulty": 1.0, "search": "beam"},
)
"""Easy problems: parallel sampling is enough; harder ones: step-level search (Snell et
al.'s finding). Rows without ``n`` use the run's N. Fit your own with :func:`fit_table`."""


def parse_table(raw: Any) -> list[dict[str, Any]]:
    """Validate a table option (a list of rows) into sorted rows; UsageError if wrong."""
    if raw is None:
        return [dict(row) for row in DEFAULT_TABLE]
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes) or not raw:
        raise UsageError(
            'compute-optimal: -o table must be a non-empty list of rows like [{max_difficulty=1.0, search="beam", n=8}]'
        )
    fields = (Config.field_names() | set(MOVED)) - {"options", *BACKEND_FIELDS}  # a sub-policy runs on the run's model
    rows = []
    for row in raw:
        if not isinstance(row, Mapping) or "search" not in row or "max_difficulty" not in row:
            raise UsageError(f"compute-optimal: each table row needs max_difficulty and search, got {row!r}")
        unknown = sorted(set(row) - fields - {"max_difficulty"})
        if unknown:
            raise UsageError(
                f"compute-optimal: table row {row!r} has unknown key(s) {', '.join(unknown)}; "
                f"a row may set {', '.join(sorted(fields))} and max_difficulty"
            )
        if row["search"] == "compute-optimal":
            raise UsageError("compute-optimal: a table row cannot choose compute-optimal itself")
        rows.append(dict(row))
    rows.sort(key=lambda r: float(r["max_difficulty"]))
    return rows


def pick(table: Sequence[Mapping[str, Any]], difficulty: float) -> dict[str, Any]:
    """The first row (by max_difficulty) that covers ``difficulty``; the hardest row
    covers anything beyond the table."""
    for row in table:
        if difficulty <= float(row["max_difficulty"]):
            return dict(row)
    return dict(table[-1])


def strategy(row: Mapping[str, Any]) -> dict[str, Any]:
    """A table row's Config changes (all but its ``max_difficulty``)."""
    return {k: v for k, v in row.items() if k != "max_difficulty"}


class ComputeOptimal(SearchPolicy):
    class Options(reason.Options):
        probe = Option(int, 2, minimum=1, help="cheap samples that measure a problem's difficulty")
        probe_tokens = Option(int, None, minimum=1, help="token cap of a probe sample [--max-tokens]")
        table = Option(
            list,
            None,
            help="rows {max_difficulty, search, n, ...}: the strategy per difficulty [best-of-n, dvts, beam]",
        )

    options: Options

    def __init__(self, config: Config, arg: str | None = None, **kwargs: Any) -> None:
        super().__init__(config, arg, **kwargs)
        self.probe = self.options.probe
        self.probe_tokens = self.options.probe_tokens or config.max_tokens
        self.table = parse_table(self.options.table)

    def sub_configs(self) -> list[Config]:
        return [self.config.replace(**strategy(row)) for row in self.table]

    async def run(self, ctx: SearchContext) -> SearchOutcome:
        params = ctx.config.sampling(max_tokens=min(self.probe_tokens, ctx.config.max_tokens))
        leaves = await ctx.generate(ctx.root, self.probe, params)
        for leaf in leaves:
            leaf.meta["probe"] = True
        if ctx.verifier is not None:
            scores = await ctx.score(leaves)
            difficulty = 1.0 - sum(scores) / len(scores) if scores else 1.0
        else:
            scores = []
            _, votes = vote([ctx.answer(leaf) for leaf in leaves])
            difficulty = 1.0 - votes / len(leaves) if leaves else 1.0
        changes = strategy(pick(self.table, difficulty))
        config = ctx.config.replace(**changes)
        outcome = await ctx.run_policy(config)
        probe_scores: list[float | None] = list(scores) if scores else [None] * len(leaves)
        outcome.meta = {
            **outcome.meta,
            "difficulty": round(difficulty, 6),
            "strategy": config.search,
            "strategy_n": config.n,
            "choice": changes,
            "probe": [{"node_id": leaf.id, "score": score} for leaf, score in zip(leaves, probe_scores)],
        }
        return outcome


def fit_table(
    records: Iterable[Mapping[str, Any]],
    bins: int = 3,
    token_budget: float | None = None,
) -> list[dict[str, Any]]:
    """Fit a compute-optimal table from eval records.

    ``records``: one per (task, setting), each with ``difficulty`` (from the probe),
    ``search``, ``n``, ``correct`` (bool) and ``tokens`` (generated tokens). The
    difficulties are cut into ``bins`` equal-count bins; for each bin the setting with
    the highest accuracy wins (fewer mean tokens on ties), among settings whose mean
    tokens fit ``token_budget`` when one is given. Returns rows for ``-o table=...``.
    """
    records = list(records)
    if not records:
        raise ValueError("fit_table needs at least one record")
    difficulties = sorted({float(r["difficulty"]) for r in records})
    bins = max(1, min(bins, len(difficulties)))
    edges = [difficulties[min(len(difficulties) - 1, round(len(difficulties) * (i + 1) / bins) - 1)] for i in range(bins)]
    edges[-1] = 1.0
    table: list[dict[str, Any]] = []
    lower = -1.0
    for edge in edges:
        if edge <= lower:
            continue
        stats: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        for r in records:
            if lower < float(r["difficulty"]) <= edge:
                s = stats[(str(r["search"]), int(r["n"]))]
                s[0] += 1
                s[1] += bool(r["correct"])
                s[2] += float(r.get("tokens", 0))
        fitting = {k: v for k, v in stats.items() if token_budget is None or v[2] / v[0] <= token_budget}
        if fitting:
            (search, n), _ = max(fitting.items(), key=lambda kv: (kv[1][1] / kv[1][0], -kv[1][2] / kv[1][0]))
            table.append({"max_difficulty": edge, "search": search, "n": n})
        lower = edge
    if not table:
        raise ValueError("no setting fits the token budget in any difficulty bin")
    table[-1]["max_difficulty"] = 1.0
    return table
