"""Several rollout runs of one policy as one training set (``reason learn join``).

Rollouts are made in pieces: a run stopped with problems in flight, the next started at a
later ``--offset``, and the two may hold the same problem. Features are stored per
candidate, so a problem may come from one run only: the first run given that holds it.
Features already extracted for a kept problem are linked, not read again.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from reason.errors import UsageError

from .extract import file_name, group_by_task
from .labels import TRAJECTORIES, read_run, read_trajectories, write_problems


def open_trajectories(run_dir: Path) -> Iterator[dict[str, Any]]:
    """A run's trajectories, from ``trajectories.jsonl`` or, as committed sets are
    shipped, ``trajectories.jsonl.gz``."""
    for path in (run_dir / TRAJECTORIES, run_dir / (TRAJECTORIES + ".gz")):
        if path.is_file():
            return read_trajectories(path)
    raise UsageError(f"{run_dir} holds no {TRAJECTORIES}: run `reason learn labels {run_dir}` first")


def join(runs: Sequence[Path], out: Path) -> dict[str, Any]:
    """Write ``out/trajectories.jsonl`` from ``runs`` (each problem from the first run that
    holds it), ``out/run.json`` and ``out/trajectories.json``, and link the kept problems'
    features. Returns the counts, with ``"dropped"``: each later run's problems that an
    earlier one held, and ``"linked"``: the feature files linked."""
    metas = {run: read_run(run) for run in runs}
    models = {str(run): meta["identity"]["config"].get("model") for run, meta in metas.items()}
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
    joined = [{"run": str(run), "offset": meta.get("offset")} for run, meta in metas.items()]
    (out / "run.json").write_text(json.dumps({"identity": metas[runs[0]]["identity"], "joined": joined}, indent=2) + "\n")
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
