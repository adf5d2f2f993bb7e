"""``reason learn``: a verifier learned from the runtime's own rollouts.

Importing this module costs click only; each command loads what it needs when it runs.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from reason.errors import UsageError

TEST_SETS = ("gsm8k", "math500", "multiarith", "humaneval")
"""Registered datasets that are test splits: accuracy is reported on them, so nothing is
ever trained on them."""

EXAMPLES = """
\b
The pipeline (each step resumes where it stopped):
  reason learn rollouts --dataset gsm8k-train --limit 400 --n 8 --backend vllm --out runs/learn
  reason learn features runs/learn --layers 12
  reason learn train runs/learn --layers 12 --out my-head
  reason solve --verifier probe:my-head.json "..."
  reason learn export-sft runs/learn --out sft.jsonl      # the right trajectories, chat form

\b
Rollouts made in pieces (each a later --offset), as one training set:
  reason learn join runs/learn runs/learn-400 --out runs/all
"""


def _say(message: str) -> None:
    click.echo(f"reason learn: {message}", err=True)


def _layers(text: str) -> tuple[int, ...]:
    try:
        layers = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise UsageError(f"--layers takes block numbers separated by commas, e.g. 12 or 6,12,18 (got {text!r})") from None
    if not layers or layers[0] < 1:
        raise UsageError(f"--layers: block numbers start at 1 (got {text!r})")
    return layers


def _run_dir(path: str, trajectories: bool = False) -> Path:
    """A rollouts directory: its results.jsonl, or (``trajectories``: for the commands
    that read only those) its trajectories.jsonl, e.g. a committed set unpacked with
    ``gunzip -k trajectories.jsonl.gz``."""
    directory = Path(path)
    if (directory / "results.jsonl").is_file() or (trajectories and (directory / "trajectories.jsonl").is_file()):
        return directory
    raise UsageError(
        f"{directory} holds no rollouts (no results.jsonl): make them with `reason learn rollouts --out {directory}`"
    )


def _model_of(directory: Path) -> str | None:
    from .labels import read_run

    return read_run(directory)["identity"]["config"].get("model")


def _choices(flag: str, text: str, allowed: Sequence[str]) -> list[str]:
    """A comma-separated list of names, each one of ``allowed``."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise UsageError(f"{flag}: {', '.join(unknown) or 'nothing'} given; choose among {', '.join(allowed)} (comma-separated)")
    return names


def _penalties(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(value < 0 for value in values):
        raise UsageError(f"--weight-decay takes penalties >= 0 separated by commas, e.g. 0.01 or 0.001,0.01 (got {text!r})")
    return values


@click.group("learn", epilog=EXAMPLES)
def learn_group() -> None:
    """Train a verifier on the policy's own rollouts (a probe on its hidden states)."""


def _write_trajectories(directory: Path) -> dict[str, Any]:
    from reason.eval.results import ResultsFile

    from .labels import TRAJECTORIES, write_trajectories

    records = ResultsFile(directory / "results.jsonl").read()  # never repair: a run may be appending
    stats = write_trajectories(records, directory / TRAJECTORIES)
    (directory / "trajectories.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def _rollouts(ctx: click.Context, **params: Any) -> None:
    """Run a search over a training set and label every trajectory.

    Takes every option of `reason eval` (it is an eval run with its trees saved, so it is
    resumable with --resume, shows progress and keeps every finished problem on a crash),
    then writes DIR/trajectories.jsonl: each candidate's steps, its graded outcome, and
    per-step labels (the outcome carried to each step, and Monte-Carlo estimates from the
    candidates that share each tree node). Test splits are refused.
    """
    from reason.eval.cli import eval_command

    dataset = (params.get("dataset_name") or "").split(":")[0].lower()
    if not dataset:
        raise UsageError("reason learn rollouts needs --dataset, e.g. gsm8k-train (a training set with references)")
    if dataset in TEST_SETS:
        raise UsageError(
            f"--dataset {dataset} is a test split: accuracy is reported on it, so nothing may be trained on it; "
            "use a training set (gsm8k-train, or a JSONL file of your own)"
        )
    if not params.get("out"):
        raise UsageError("reason learn rollouts needs --out DIR (where the rollouts and trajectories go)")
    params["save_tree"] = True
    params["no_plot"] = True
    try:
        ctx.invoke(eval_command, **params)
    finally:
        directory = Path(params["out"])
        if (directory / "results.jsonl").is_file():
            stats = _write_trajectories(directory)
            _say(
                f"{stats['trajectories']} trajectories of {stats['problems']} problems ({stats['right']} right) "
                f"in {directory / 'trajectories.jsonl'}"
            )


def _register_rollouts() -> None:
    from reason.eval.cli import eval_command

    hidden = {"save_tree", "no_plot", "ray_address", "workers", "worker_cpus", "worker_gpus"}
    params = [p for p in eval_command.params if p.name not in hidden]
    command = click.Command(
        "rollouts",
        params=params,
        callback=click.pass_context(_rollouts_callback),
        help=_rollouts.__doc__,
        epilog="\b\nExample:\n  reason learn rollouts --dataset gsm8k-train --limit 400 --search self-consistency "
        "--n 8 --backend vllm --seed 1 --out runs/learn",
    )
    learn_group.add_command(command)


def _rollouts_callback(ctx: click.Context, **params: Any) -> None:
    params.update(ray_address=None, workers=None, worker_cpus=1.0, worker_gpus=0.0)
    _rollouts(ctx, **params)


@learn_group.command("labels")
@click.argument("run_dir", type=click.Path(file_okay=False))
def labels_command(run_dir: str) -> None:
    """(Re)write RUN_DIR/trajectories.jsonl from the rollouts finished so far."""
    stats = _write_trajectories(_run_dir(run_dir))
    click.echo(json.dumps(stats, indent=2))


@learn_group.command("join")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="The new directory to write.")
def join_command(runs: tuple[str, ...], out: str) -> None:
    """Join rollout runs of one policy into one training set.

    Each problem comes from the first run given that holds it (runs stopped with problems
    in flight and continued at a later --offset share some); features already extracted
    for a kept problem are linked, so `reason learn features OUT` reads only the rest.
    Reads trajectories.jsonl or, as committed sets ship it, trajectories.jsonl.gz.
    """
    from .join import join

    stats = join([Path(run) for run in runs], Path(out))
    for run, tasks in stats.pop("dropped").items():
        _say(f"{run}: {len(tasks)} problems an earlier run holds, left out ({', '.join(tasks)})")
    _say(f"{stats.pop('linked')} feature files linked")
    click.echo(json.dumps(stats, indent=2))


@learn_group.command("export-sft")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="The JSONL file to write.")
@click.option("--system-prompt", help="A system message to put first in every conversation.")
def export_sft(run_dir: str, out: str, system_prompt: str | None) -> None:
    """Write the right trajectories as chat conversations: a rejection-sampling SFT set."""
    from .labels import TRAJECTORIES, read_trajectories, sft_records

    directory = _run_dir(run_dir, trajectories=True)
    if not (directory / TRAJECTORIES).is_file():
        _write_trajectories(directory)
    target = Path(out)
    tmp = target.with_suffix(target.suffix + ".tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for record in sft_records(read_trajectories(directory / TRAJECTORIES), system_prompt):
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    tmp.replace(target)
    _say(f"{count} conversations in {target}")


@learn_group.command("features")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--layers", default="12", show_default=True, help="Residual-stream layers to read (block outputs, 1-based), e.g. 6,12,18."
)
@click.option("--limit", type=int, help="Only the first N problems.")
@click.option("--device", help="Where the policy runs: cpu, cuda ... [auto]")
def features_command(run_dir: str, layers: str, limit: int | None, device: str | None) -> None:
    """Read the policy's hidden states for every trajectory (resumable)."""
    from .extract import extract
    from .features import FeatureSpec
    from .labels import TRAJECTORIES

    directory = _run_dir(run_dir, trajectories=True)
    if not (directory / TRAJECTORIES).is_file():
        _write_trajectories(directory)
    spec = FeatureSpec(layers=_layers(layers))

    def progress(done: int, total: int, seconds: float) -> None:
        _say(f"features {done}/{total} problems, {seconds:.0f}s")

    out = extract(directory, spec, _model_of(directory), device=device, limit=limit, progress=progress)
    _say(f"features in {out}")


@learn_group.command("train")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--layers",
    default="12",
    show_default=True,
    help="Layers the features were read at; heads are tried on each and on all together.",
)
@click.option(
    "--out", "out", required=True, type=click.Path(dir_okay=False), help="The head to write: OUT.safetensors and OUT.json."
)
@click.option("--kinds", default="linear,encoder", show_default=True, help="Head kinds to try.")
@click.option(
    "--pooling",
    "poolings",
    default="mean,mean+step",
    show_default=True,
    help="How linear heads pool a step prefix, each tried: mean (the path so far), mean+step (and the step's own "
    "tokens: what tells a beam's sibling paths apart), mean+last.",
)
@click.option(
    "--centred",
    is_flag=True,
    help="Also try each linear head fitted on features minus their problem's mean (problems with both outcomes "
    "only): it learns what tells one problem's candidates apart, not which problems are hard.",
)
@click.option(
    "--weight-decay",
    "penalties",
    default="0.001,0.01",
    show_default=True,
    help="L2 penalties each linear head is tried at, comma-separated (on 266 GSM8K-train problems 0.01 beat 0.001 "
    "on every layer; more data may want less).",
)
@click.option(
    "--label", type=click.Choice(["outcome", "mc"]), default="outcome", show_default=True, help="Which step labels to learn."
)
@click.option("--folds", "k", type=int, default=5, show_default=True, help="Cross-validation folds, by problem.")
def train_command(
    run_dir: str, layers: str, out: str, kinds: str, poolings: str, centred: bool, penalties: str, label: str, k: int
) -> None:
    """Cross-validate heads by problem, keep the best, calibrate it and save it with its card."""
    from . import train as tr
    from .features import POOLINGS
    from .heads import head_files
    from .labels import file_sha256, read_run

    stored = _layers(layers)
    candidates = tr.default_candidates(
        stored,
        set(_choices("--kinds", kinds, tr.KINDS)),
        _choices("--pooling", poolings, POOLINGS),
        centred,
        _penalties(penalties),
    )
    directory = _run_dir(run_dir, trajectories=True)
    problems = tr.load_problems(directory, stored, label)
    if len(problems) < k * 2:
        raise UsageError(
            f"{directory}: features for {len(problems)} problems; extract more with `reason learn features` "
            f"(at least {2 * k} for {k} folds)"
        )
    _say(
        f"{len(problems)} problems, {sum(len(p.samples) for p in problems)} trajectories; "
        f"trying {len(candidates)} heads, {k} folds by problem"
    )
    results = []
    for candidate in candidates:
        start = time.perf_counter()
        try:
            result = tr.cross_validate(candidate, problems, stored, k)
        except tr.CannotFit as error:  # e.g. a centred head on a fold whose problems all have one outcome
            _say(f"{candidate.name}: skipped, {error}")
            continue
        result["seconds"] = round(time.perf_counter() - start, 1)
        results.append((candidate, result))
        _say(f"{candidate.name}: " + tr.describe(result))
    if not results:
        raise UsageError(f"{directory}: no head could be fitted; extract features for more problems")
    best, best_result = max(results, key=lambda pair: tr.selection_key(pair[1]))
    _say(f"chosen: {best.name}")
    model = _model_of(directory)
    head, card = tr.finish(best, best_result, problems, stored, model)
    trajectories = directory / "trajectories.jsonl"
    card["training"] = {
        "data": str(trajectories),
        "data_sha256": file_sha256(trajectories),
        "problems": len(problems),
        "trajectories": sum(len(p.samples) for p in problems),
        "label": label,
        "command": "reason learn train " + " ".join(shlex.quote(a) for a in sys.argv[3:]),
        "rollouts": read_run(directory)["identity"],
    }
    card["cross_validation"] = [dict(r, logits=None, name=c.name) for c, r in results]
    path = tr.save(head, card, Path(out))
    _say(f"head saved: {path} and {head_files(path)[1]}")


def register(cli: click.Group) -> None:
    _register_rollouts()
    cli.add_command(learn_group)
