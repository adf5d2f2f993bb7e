"""Accuracy-vs-compute plots for ``reason eval`` (matplotlib, Agg backend, imported only
when a plot is drawn).

The x axis is generated tokens per problem (log scale, base 2, since budgets double);
each selection rule (maj@n, weighted@n, naive@n) is one solid or dotted line through its
budgets n = 1, 2, 4, ... N; the strategy's own choice is one star at its full cost; pass@n,
an oracle upper bound (some candidate is right), is a thin dashed ceiling labelled as
such, so it is never read as something a strategy reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .report import dataset_label

STYLES = {"maj": "-", "weighted": "-.", "naive": ":", "pass": "--"}
MARKERS = {"maj": "o", "weighted": "s", "naive": "^", "pass": "none"}
LABELS = {
    "maj": "maj@n (vote)",
    "weighted": "weighted@n (score-weighted vote)",
    "naive": "naive@n (top score)",
    "pass": "pass@n (oracle ceiling)",
}
ORACLES = ("pass",)
"""Families drawn as a dashed ceiling: upper bounds, not choices."""


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _families(summary: dict[str, Any]) -> list[str]:
    return [f for f in ("maj", "weighted", "naive", "pass") if f"{f}@1" in summary]


def _series(summary: dict[str, Any], family: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for k in summary.get("budgets") or []:
        if f"{family}@{k}" in summary:
            xs.append(max(float(summary.get(f"tokens@{k}", 0.0)), 1e-9))
            ys.append(100.0 * float(summary[f"{family}@{k}"]))
    return xs, ys


def _draw(ax: Any, summary: dict[str, Any], color: Any, prefix: str = "") -> None:
    for family in _families(summary):
        xs, ys = _series(summary, family)
        if not xs:
            continue
        if family in ORACLES:
            ax.plot(
                xs,
                ys,
                linestyle=STYLES[family],
                linewidth=1.0,
                alpha=0.7,
                color=color,
                label=f"{prefix}{LABELS[family]}",
                zorder=1,
            )
        else:
            ax.plot(xs, ys, STYLES[family], marker=MARKERS[family], color=color, label=f"{prefix}{LABELS[family]}")
    if "accuracy" in summary:
        ax.scatter(
            [max(float(summary.get("tokens_per_problem", 0.0)), 1e-9)],
            [100.0 * float(summary["accuracy"])],
            marker="*",
            s=180,
            color=color,
            edgecolors="black",
            zorder=5,
            label=f"{prefix}{summary.get('search')}'s choice",
        )


def _finish(ax: Any, fig: Any, title: str, path: Path) -> Path:
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.set_xlabel("generated tokens per problem")
    ax.set_ylabel("accuracy (%)")
    # zoom to the data (small models score a few percent; a 0-100 axis would flatten them)
    top = min(102.0, max(10.0, 1.2 * float(ax.dataLim.y1) + 2.0))
    ax.set_ylim(-top / 50, top)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_run(summary: dict[str, Any], path: str | Path) -> Path:
    """``accuracy_vs_budget.png`` of one run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        _draw(ax, summary, "tab:blue")
        title = (
            f"{dataset_label(summary.get('dataset'))}: {summary.get('search')} n={summary.get('n')}, "
            f"verifier={summary.get('verifier') or 'none'}, {summary.get('problems')} problems"
            + (f" ({summary['unverified']} unverified)" if summary.get("unverified") else "")
        )
        return _finish(ax, fig, title, Path(path))
    finally:
        plt.close(fig)


def plot_compare(summaries: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Several runs on one plot: one color per run, one line style per metric."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    try:
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, summary in enumerate(summaries):
            name = Path(str(summary.get("dir", f"run{i}"))).name
            _draw(ax, summary, colors[i % len(colors)], prefix=f"{name}: ")
        datasets = sorted({dataset_label(s.get("dataset")) for s in summaries})
        return _finish(ax, fig, f"accuracy vs compute on {', '.join(datasets)}", Path(path))
    finally:
        plt.close(fig)
