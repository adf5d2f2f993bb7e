"""Several rollout runs of one policy as one training set (``reason learn join``).

Rollouts are made in pieces: a run stopped with problems in flight, the next started at a
later ``--offset``, and the two may hold the same problem. Features are stored per
candidate, so a problem may come from one run only: the first run given that holds it.
Features already extracted for a kept problem are linked, not read again.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from reason.errors import UsageError

from .extract import file_name, group_by_task
from .labels import TRAJECTORIES, write_problems


def open_trajectories(run_dir: Path) -> Iterator[dict[str, Any]]:
    """A run's trajectories, from ``trajectories.jsonl`` or, as committed sets are
    shipped, ``trajectories.jsonl.gz``."""
    plain, packed = run_dir / TRAJECTORIES, run_dir / (TRAJECTORIES + ".gz")
    if plain.is_file():
        fh = open(plain, encoding="utf-8")
    elif packed.is_file():
        fh = gzip.open(packed, "rt", encoding="utf-8")
    else:
        raise UsageError(f"{run_dir} holds no {TRAJECTORIES}: run `reason learn labels {run_dir}` first")
    with fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _policy(run_dir: Path) -> str | None:
    path = run_dir / "run.json"
    if not path.is_file():
        raise UsageError(f"{run_dir} holds no run.json: is it a rollouts directory (`reason learn rollouts --out`)?")
    return json.loads(path.read_text())["identity"]["config"].get("model")


def join(runs: Sequence[Path], out: Path) -> dict[str, Any]:
    """Write ``out/trajectories.jsonl`` from ``runs`` (each problem from the first run that
    holds it), ``out/run.json`` and ``out/trajectories.json``, and link the kept problems'
    features. Returns the counts, with ``"dropped"``: each later run's problems that an
    earlier one held, and ``"linked"``: the feature files linked."""
    models = {str(run): _policy(run) for run in runs}
    if len(set(models.values())) > 1:
        named = ", ".join(f"{run}: {model}" for run, model in models.items())
        raise UsageError(f"the runs were made by different policies ({named}); features belong to one: join one policy's runs")
    if (out / TRAJECTORIES).exists() or (out / "results.jsonl").exists():
        raise UsageError(f"{out} already holds rollouts; join into a new directory")

    origin: dict[str, Path] = {}
    dropped: dict[str, list[str]] = {}

    def problems() -> Iterator[list[dict[str, Any]]]:
        for run in runs:
            for task, group in group_by_task(open_trajectories(run)):
                if origin.setdefault(task, run) == run:
                    yield group
                else:
                    dropped.setdefault(str(run), []).append(task)

    out.mkdir(parents=True, exist_ok=True)
    stats = write_problems(problems(), out / TRAJECTORIES)
    first = json.loads((runs[0] / "run.json").read_text())
    joined = [{"run": str(run), "offset": json.loads((run / "run.json").read_text()).get("offset")} for run in runs]
    (out / "run.json").write_text(json.dumps({"identity": first["identity"], "joined": joined}, indent=2) + "\n")
    (out / "trajectories.json").write_text(json.dumps(stats, indent=2) + "\n")
    stats["dropped"] = dropped
    stats["linked"] = _link_features(origin, out)
    return stats


def _link_features(origin: dict[str, Path], out: Path) -> int:
    """Hard-link (copy where the file system cannot) each kept problem's feature files
    from the run it came from; returns how many."""
    count = 0
    for task, run in origin.items():
        for layers in sorted((run / "features").glob("L*")):
            source = layers / file_name(task)
            if not source.is_file():
                continue
            target = out / "features" / layers.name / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                continue
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
            count += 1
    return count
