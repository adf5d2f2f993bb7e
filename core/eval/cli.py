"""``reason eval``: run a strategy over a benchmark and measure accuracy against compute;
``reason eval compare``: put several runs side by side.

Importing this module costs click only (``reason --help`` lists the command and stays
fast); the harness, grading and plots load when the command runs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from reason.cli import config_from, run_options
from reason.errors import UsageError

EXAMPLES = """
\b
Examples:
  reason eval --dataset multiarith --limit 50 --search best-of-n --n 8
  reason eval --dataset math500 --search beam --n 8 --verifier prm --prm-model DIR
  reason eval --dataset humaneval --limit 20 --search best-of-n --n 4 --verifier sandbox
  reason eval --dataset my.jsonl --question-field q --answer-field a --n 4
  reason eval --dataset gsm8k --out runs/g --resume        # continue an interrupted run
  reason eval --dataset gsm8k --ray auto --n 8             # on the Ray cluster running here
  reason eval compare runs/bon runs/beam --plot compare.png
"""


def _dataset_spec(name: str) -> str:
    """A registered dataset name (``gsm8k``), or ``jsonl:PATH`` for a file."""
    lowered = name.lower()
    if lowered.endswith((".jsonl", ".jsonl.gz", ".json")) or "/" in name or Path(name).is_file():
        return f"jsonl:{Path(name).expanduser().resolve()}"
    return name


def _reads_n(config: Any) -> bool:
    """Whether the run's search reads ``--n`` (greedy returns one answer whatever it says),
    so that labels and run directories name the n the run actually uses."""
    from reason import get_registry

    try:
        registration, _ = get_registry().lookup("search", config.search)
    except Exception:  # noqa: BLE001 -- an unknown search fails with its own message later
        return True
    return bool(getattr(registration.factory, "reads_n", True))


def _default_out(spec: str, config: Any) -> Path:
    """``runs/gsm8k-best-of-n-n8``; ``runs/gsm8k-greedy`` for a search that ignores --n."""
    name = Path(spec.partition(":")[2]).name.split(".")[0] if spec.startswith("jsonl:") else spec.replace(":", "-")
    search = config.search.replace(":", "-")
    return Path("runs") / (f"{name}-{search}-n{config.n}" if _reads_n(config) else f"{name}-{search}")


class _Progress:
    """A rich progress bar on stderr (ETA, running accuracy); one line per problem when
    stderr is not a terminal (logs, CI)."""

    def __init__(self, total: int, done: int, correct: int, label: str, quiet: bool) -> None:
        from rich.console import Console

        self.total, self.done, self.correct = total, done, correct
        self.console = Console(stderr=True)
        self.quiet = quiet
        self.progress = None
        if quiet:
            return
        if self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("acc {task.fields[acc]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self.progress.start()
            self.task_id = self.progress.add_task(label, total=total, completed=done, acc=self._acc())
        else:
            click.echo(f"reason eval: {label}: {done}/{total} done, {total - done} to go", err=True)
        self.start = time.monotonic()
        self.started_done = done

    def _acc(self) -> str:
        return f"{100 * self.correct / self.done:.1f}%" if self.done else "-"

    def __call__(self, record: dict[str, Any]) -> None:
        self.done += 1
        self.correct += bool(record.get("correct"))
        if self.quiet:
            return
        if self.progress is not None:
            self.progress.update(self.task_id, completed=self.done, acc=self._acc())
            return
        elapsed = time.monotonic() - self.start
        finished_now = self.done - self.started_done
        eta = elapsed / finished_now * (self.total - self.done) if finished_now else 0.0
        click.echo(
            f"reason eval: {self.done}/{self.total} {record['task_id']} "
            f"{'correct' if record.get('correct') else 'wrong'}; acc {self._acc()}; "
            f"elapsed {elapsed:.0f}s, eta {eta:.0f}s",
            err=True,
        )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


@click.group("eval", invoke_without_command=True, epilog=EXAMPLES)
@click.option(
    "--dataset",
    "dataset_name",
    metavar="NAME|PATH.jsonl",
    help="gsm8k, math500, multiarith, humaneval (or any registered dataset), or a JSONL file.",
)
@click.option("--limit", type=int, help="Evaluate at most this many problems.")
@click.option("--offset", type=int, default=0, show_default=True, help="Skip this many problems first.")
@click.option("--out", "out", type=click.Path(file_okay=False), help="Run directory [runs/DATASET-SEARCH-nN].")
@click.option("--resume", is_flag=True, help="Continue the run in --out: skip finished problems, never repeat one.")
@click.option(
    "--data-dir", type=click.Path(file_okay=False), help="Folder holding the datasets [$REASON_DATA_DIR, ../shared/data]."
)
@click.option("--question-field", help="JSONL datasets: the field with the question [question|problem|input|prompt].")
@click.option("--answer-field", help="JSONL datasets: the field with the reference answer [answer|target|...].")
@click.option(
    "--concurrency",
    type=int,
    default=None,
    help="Problems in flight at once (their requests share the batch; with --ray, on each worker); the next starts as each finishes.  [default: enough to fill the engine: 2 x its rows / the search's width, and more while its rows are idle, at most its rows; 16 where the engine does not say]",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[ADDRESS]",
    help="Solve on Ray workers (needs reason-runtime[ray]): a cluster's ADDRESS (auto: the one running here, "
    "HOST:PORT, ray://HOST:PORT), or no value to start a local one. This process grades and writes.",
)
@click.option(
    "--workers", type=int, help="--ray: how many workers [as many as the cluster's CPUs fit, or GPUs with --worker-gpus]."
)
@click.option("--worker-cpus", type=float, default=1.0, show_default=True, help="--ray: CPUs each worker reserves.")
@click.option(
    "--worker-gpus", type=float, default=0.0, show_default=True, help="--ray: GPUs each worker reserves (1: a model per GPU)."
)
@click.option("--save-tree", is_flag=True, help="Store each problem's search tree in results.jsonl.")
@click.option("--no-plot", is_flag=True, help="Do not draw accuracy_vs_budget.png.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of a table.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
@run_options
@click.pass_context
def eval_command(
    ctx: click.Context,
    dataset_name: str | None,
    limit: int | None,
    offset: int,
    out: str | None,
    resume: bool,
    data_dir: str | None,
    question_field: str | None,
    answer_field: str | None,
    concurrency: int | None,
    ray_address: str | None,
    workers: int | None,
    worker_cpus: float,
    worker_gpus: float,
    save_tree: bool,
    no_plot: bool,
    as_json: bool,
    quiet: bool,
    **params: Any,
) -> None:
    """Evaluate a search strategy on a benchmark: accuracy against compute.

    Solves every problem (batched across problems), grades every candidate, and writes
    DIR/results.jsonl (one line per problem, crash-safe), DIR/summary.json and
    DIR/accuracy_vs_budget.png. Takes every option of `reason solve`.

    \b
    What the report holds, never mixed up:
      the strategy's choice   the answer the search returned (accuracy)
      maj@n, weighted@n,      what each selection rule picks among n = 1, 2, 4 ... N
      naive@n                 candidates (vote, score-weighted vote, top score)
      pass@n (code)           oracle upper bound: some candidate passes the hidden tests;
                              no strategy can choose by it (dashed ceiling in the plot)
      unverified (code)       problems without public tests: the sandbox verifier could
                              not check their candidates

    The search never sees what grades it: no reference answer, no hidden tests. The
    sandbox verifier runs a task's public tests (the prompt's examples); grading runs
    the hidden ones.
    """
    if ctx.invoked_subcommand is not None:
        return
    if not dataset_name:
        raise UsageError("reason eval needs --dataset NAME|PATH.jsonl (gsm8k, math500, multiarith, humaneval)")
    from reason import get_registry

    from .report import console, summary_table
    from .run import EvalRun

    config = config_from(params)
    extra = {k: v for k, v in (("data_dir", data_dir), ("question_field", question_field), ("answer_field", answer_field)) if v}
    if extra:
        config = config.replace(options=extra)
    if concurrency is not None and concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, got {concurrency}")
    ray = None
    if ray_address is not None:
        from .distributed import import_ray

        import_ray()  # before the run directory is made: no Ray, one line and nothing written
        ray = {"address": ray_address, "workers": workers, "cpus": worker_cpus, "gpus": worker_gpus}
    elif workers is not None:
        raise UsageError("--workers needs --ray")
    spec = _dataset_spec(dataset_name)
    dataset = get_registry().create("dataset", spec, config)
    directory = Path(out) if out else _default_out(spec, config)
    run = EvalRun(
        dataset_spec=spec,
        dataset=dataset,
        config=config,
        out=directory,
        offset=offset,
        limit=limit,
        resume=resume,
        save_tree=save_tree,
        concurrency=concurrency,
    )
    try:
        todo = run.prepare()
        total = len(todo) + len(run.records)
        if todo:
            _solve(run, todo, total, quiet or as_json, ray)
        elif not quiet:
            click.echo(f"reason eval: every selected problem is already in {directory / 'results.jsonl'}", err=True)
    except KeyboardInterrupt:
        _finish(run, no_plot, partial=True)
        click.echo(
            f"reason eval: interrupted; {len(run.records)} problem(s) saved in {directory}; "
            "continue with the same options and --resume",
            err=True,
        )
        raise
    except Exception:
        if run.records:
            _finish(run, no_plot, partial=True)
        raise
    finally:
        dataset.close()
    summary = _finish(run, no_plot)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        console().print(summary_table(summary))
        click.echo(f"results: {directory}/results.jsonl, summary.json" + ("" if no_plot else ", accuracy_vs_budget.png"))


def _solve(run: Any, todo: list, total: int, quiet: bool, ray: dict[str, Any] | None) -> None:
    """Solve on a Runtime here, or on Ray workers (``ray``: the :class:`RayPool`'s
    arguments); either way this process grades, writes and reports."""
    n = f" n={run.config.n}" if _reads_n(run.config) else ""
    label = f"{run.dataset_spec.rsplit('/', 1)[-1]} {run.config.search}{n}"
    if ray is None:
        from reason import Runtime

        solver: Any = Runtime(run.config)
    else:
        from .distributed import RayPool

        solver = RayPool(run.config, **ray)
        label += " (ray)"
    progress = None
    try:
        with solver:
            if run.concurrency is None and ray is None and not quiet:
                filling = solver.filling_for(run.config)
                rows = solver.backend.rows
                why = f" (2 x {rows} engine rows / {run.config.search}'s width)" if rows else ""
                more = f", more while engine rows are idle (at most {filling.ceiling})" if filling.ceiling > filling.floor else ""
                click.echo(f"reason eval: {filling.floor} problems in flight{why}{more}; --concurrency sets it", err=True)
            progress = _Progress(total, len(run.records), sum(1 for r in run.records if r.get("correct")), label, quiet)
            run.run(solver, todo, on_record=progress)
    finally:
        if progress is not None:
            progress.close()


def _finish(run: Any, no_plot: bool, partial: bool = False) -> dict[str, Any]:
    from .results import PLOT

    summary = run.summarize()
    if not no_plot and summary.get("problems"):
        try:
            from .plots import plot_run

            plot_run(summary, run.out / PLOT)
        except Exception as exc:  # a plot must never lose the results
            if not partial:
                click.echo(f"reason eval: could not draw the plot: {exc}", err=True)
    return summary


@eval_command.command("compare")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default="eval_compare.png",
    show_default=True,
    help="Where to write the side-by-side plot.",
)
@click.option("--no-plot", is_flag=True, help="Only print the table.")
@click.option("--common", is_flag=True, help="Only the problems every run has finished (fair when a run stopped early).")
@click.option("--json", "as_json", is_flag=True, help="Print the summaries as JSON.")
def compare(dirs: tuple[str, ...], plot_path: str, no_plot: bool, common: bool, as_json: bool) -> None:
    """Compare evaluation runs: one table and one accuracy-vs-tokens plot.

    \b
      reason eval compare runs/multiarith-best-of-n-n8 runs/multiarith-beam-n8
    """
    from .report import compare_table, console
    from .results import load_run, task_ids

    only = None
    if common:
        only = set.intersection(*(task_ids(d) for d in dirs))
        if not only:
            raise UsageError("--common: the runs have no finished problem in common")
    summaries = [load_run(d, only) for d in dirs]
    if as_json:
        click.echo(json.dumps(summaries, indent=2))
    else:
        console().print(compare_table(summaries))
    if not no_plot:
        from .plots import plot_compare

        path = plot_compare(summaries, plot_path)
        if not as_json:
            click.echo(f"plot: {path}")


def register(cli: click.Group) -> None:
    cli.add_command(eval_command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(eval_command())
