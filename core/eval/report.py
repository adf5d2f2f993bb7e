"""The tables ``reason eval`` prints: one run's report and the comparison of runs (rich,
imported when a table is drawn)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .metrics import ORACLE_FAMILIES, metric_names


def dataset_label(spec: Any) -> str:
    """``jsonl:/long/path/x.jsonl`` -> ``x.jsonl``; names stay as they are."""
    spec = str(spec)
    return Path(spec[6:]).name if spec.startswith("jsonl:") else spec


def console() -> Any:
    """A rich console on stdout, wide enough for the tables when output is not a terminal."""
    from rich.console import Console

    out = Console()
    return out if out.is_terminal else Console(width=200)


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}" if isinstance(value, (int, float)) else "-"


ROW_LABELS = {
    "maj": "maj@n (majority vote)",
    "weighted": "weighted@n (score-weighted vote)",
    "naive": "naive@n (top verifier score)",
    "pass": "pass@n (oracle ceiling)",
}
"""Row names in the tables: what choosing among n candidates by each rule gives, and the
oracle upper bound, named as such."""


def _unverified_line(summary: dict[str, Any]) -> str | None:
    count = summary.get("unverified")
    if count is None:
        return None
    return (
        f"unverified: {count} of {summary.get('problems')} problems had no public tests, so the verifier could "
        "not check their candidates (scored 0.5; the search kept its first sample)"
    )


def summary_table(summary: dict[str, Any]) -> Any:
    """The end-of-run report: a title line; a table with the strategy's choice, one row
    per selection rule (maj@n, weighted@n, naive@n) and the oracle pass@n, one column per
    budget (and the tokens each budget costs); a line of costs and the legend."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    title = (
        f"{dataset_label(summary.get('dataset'))} · {summary.get('search')} n={summary.get('n')} · "
        f"verifier={summary.get('verifier') or 'none'} · {summary.get('problems')} problems"
    )
    table = Table()
    table.add_column("accuracy %", style="bold")
    ks = summary.get("budgets") or []
    for k in ks:
        table.add_column(f"@{k}", justify="right")
    if ks:
        table.add_row(
            f"{summary.get('search')}'s choice", *([""] * (len(ks) - 1)), _pct(summary.get("accuracy")), style="bold green"
        )
    for family in metric_names(summary):
        row = [ROW_LABELS[family], *(_pct(summary.get(f"{family}@{k}")) for k in ks)]
        table.add_row(*row, style="dim italic" if family in ORACLE_FAMILIES else None)
    table.add_row("tokens", *(f"{summary.get(f'tokens@{k}', 0):.0f}" for k in ks), style="dim")
    lines = [
        f"strategy's choice: {_pct(summary.get('accuracy'))}% · "
        f"{summary.get('tokens_per_problem', 0):.0f} generated tokens/problem · "
        f"{summary.get('seconds_per_problem', 0):.2f} s/problem "
        f"(latency {summary.get('latency_per_problem', 0):.2f} s)"
    ]
    if "pass@1" in summary:
        lines.append(
            "pass@n is an oracle upper bound (some of n candidates passes the hidden tests); "
            "no strategy can choose by it. pass@1 is one sample's accuracy."
        )
    unverified = _unverified_line(summary)
    if unverified:
        lines.append(unverified)
    return Group(Text(title, style="bold"), table, *(Text(line) for line in lines))


def compare_table(summaries: Sequence[dict[str, Any]]) -> Any:
    """One row per run: its choice, each selection rule at its full budget, the oracle
    pass@N (labelled as the ceiling it is), and its costs."""
    from rich.table import Table

    families = [f for f in ("maj", "weighted", "naive", "pass") if any(f"{f}@1" in s for s in summaries)]
    table = Table(title="reason eval compare", title_justify="left")
    for name in ("run", "dataset", "search", "n", "problems", "choice %"):
        table.add_column(name, justify="right" if name in ("n", "problems", "choice %") else "left")
    for family in families:
        table.add_column(f"{family}@N % (oracle)" if family in ORACLE_FAMILIES else f"{family}@N %", justify="right")
    code = any("pass@1" in s for s in summaries)
    if code:
        table.add_column("pass@1 % (1 sample)", justify="right")
        table.add_column("unverified", justify="right")
    table.add_column("tokens/problem", justify="right")
    table.add_column("s/problem", justify="right")
    for s in summaries:
        n = s.get("n")
        row = [
            Path(s.get("dir", "?")).name,
            dataset_label(s.get("dataset")),
            str(s.get("search")),
            str(n),
            str(s.get("problems")),
            _pct(s.get("accuracy")),
            *(_pct(s.get(f"{family}@{n}")) for family in families),
        ]
        if code:
            row.append(_pct(s.get("pass@1")))
            row.append(str(s["unverified"]) if s.get("unverified") is not None else "-")
        row += [f"{s.get('tokens_per_problem', 0):.0f}", f"{s.get('seconds_per_problem', 0):.2f}"]
        table.add_row(*row)
    if code:
        table.caption = "pass@N is an oracle upper bound (needs the grader's tests), not a strategy's result"
    return table
