"""The files of a run directory, and the summary read back from them.

- ``run.json``: what was run (dataset, slice, the full config); a directory holds one run.
- ``results.jsonl``: one line per finished problem (question, reference, every candidate
  with its answer, scores, tokens and correctness, the chosen answer, usage, seconds),
  appended and fsynced as each problem finishes, so a crash loses at most the problems
  in flight, and ``--resume`` continues where the run stopped without repeating one.
- ``summary.json``: the metrics (see :func:`reason.eval.metrics.compute_metrics`), keys
  like ``"maj@4"``.
- ``accuracy_vs_budget.png``: accuracy against generated tokens per problem.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from reason import Config
from reason.errors import UsageError

from .metrics import METRIC_LABELS, compute_metrics, count_unverified

RESULTS = "results.jsonl"
RUN = "run.json"
SUMMARY = "summary.json"
PLOT = "accuracy_vs_budget.png"

IGNORED_CONFIG_KEYS = ("options.data_dir", "options.threads")
"""Config entries that do not change results: a resumed run may differ in them."""


def _json_default(value: Any) -> Any:
    """attrs instances (e.g. a Score kept in a tree node's meta) as dicts; the rest as text."""
    import attrs

    if attrs.has(type(value)):
        return attrs.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_json_default))


# --- files ----------------------------------------------------------------------------------


class ResultsFile:
    """``results.jsonl``, append-only: each record is one line, flushed and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None

    def read(self, repair: bool = False) -> list[dict[str, Any]]:
        """The finished records; a duplicate id keeps its first record. A torn last line
        (a crash mid-write, or a write in progress) is ignored; with ``repair`` (only the
        run that is about to append) it is also cut off the file, so the next append
        starts on a clean line."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        good = data.rfind(b"\n") + 1
        if repair and good < len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(good)
                os.fsync(fh.fileno())
        data = data[:good]
        records: list[dict[str, Any]] = []
        seen: set[str] = set()
        for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise UsageError(f"{self.path}:{number} is not valid JSON; fix or remove that line to resume") from None
            if record.get("task_id") in seen:
                continue
            seen.add(record.get("task_id"))
            records.append(record)
        return records

    def append(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps(record, ensure_ascii=False, default=_json_default) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON ({exc.msg}); remove it or use another --out") from None


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def run_identity(dataset: str, config: Config) -> dict[str, Any]:
    """What makes two runs the same run (the slice is not part of it: a resumed run may
    go further)."""
    return jsonable({"dataset": dataset, "config": config.to_dict()})


MOVED_DEFAULTS = {"beam_width": 4, "max_steps": 40, "weighted": False}
"""The defaults of the Config fields that became search options (:data:`reason.config.MOVED`),
for reading the identity of a run written before."""


def _upgraded(identity: dict[str, Any]) -> dict[str, Any]:
    """``identity`` as this release writes it: a moved field that kept its default goes,
    one that was set becomes the option it is now (its flat name)."""
    config = dict(identity.get("config") or {})
    options = dict(config.get("options") or {})
    for name, default in MOVED_DEFAULTS.items():
        if name in config and (value := config.pop(name)) not in (None, default):
            options.setdefault(name, value)
    return {**identity, "config": {**config, "options": options}} if "config" in identity else identity


def identity_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = _flatten(_upgraded(old)), _flatten(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if any(key == f"config.{ignored}" for ignored in IGNORED_CONFIG_KEYS):
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{key.removeprefix('config.')}: {a.get(key)!r} -> {b.get(key)!r}")
    return diffs


def summarize_records(records: Sequence[dict[str, Any]], config: Config | dict[str, Any], dataset: str) -> dict[str, Any]:
    cfg = config.to_dict() if isinstance(config, Config) else dict(config)
    ordered = sorted(records, key=lambda r: r.get("index", 0))
    summary = {
        "dataset": dataset,
        "search": cfg.get("search"),
        "verifier": cfg.get("verifier"),
        "model": cfg.get("model"),
        **compute_metrics(ordered, int(cfg.get("n") or 1)),
    }
    unverified = count_unverified(ordered, cfg.get("verifier"))
    if unverified is not None:
        summary["unverified"] = unverified
    if ordered:
        summary["labels"] = {k: v for k, v in METRIC_LABELS.items() if k == "accuracy" or f"{k}@1" in summary}
    summary["config"] = jsonable(cfg)
    return summary


def load_run(directory: str | Path, only: set[str] | None = None) -> dict[str, Any]:
    """A finished (or interrupted, or running) run's summary: ``summary.json``, or
    recomputed from ``results.jsonl`` when that is missing or newer, or when ``only``
    restricts it to some task ids (to compare runs on the same problems)."""
    directory = Path(directory)
    results_path = directory / RESULTS
    summary_path = directory / SUMMARY
    if not results_path.exists() and not summary_path.exists():
        raise UsageError(f"{directory} holds no evaluation run (no {RESULTS} or {SUMMARY})")
    summary = read_json(summary_path)
    stale = summary is None or (results_path.exists() and results_path.stat().st_mtime > summary_path.stat().st_mtime)
    if stale or only is not None:
        run = read_json(directory / RUN) or {}
        identity = run.get("identity") or {}
        records = ResultsFile(results_path).read()
        if only is not None:
            records = [r for r in records if r.get("task_id") in only]
        summary = summarize_records(records, identity.get("config") or {}, identity.get("dataset", "?"))
    summary["dir"] = str(directory)
    return summary


def task_ids(directory: str | Path) -> set[str]:
    """The ids of the problems a run has finished."""
    return {r["task_id"] for r in ResultsFile(Path(directory) / RESULTS).read()}


def records_in(directory: Path) -> Iterable[dict[str, Any]]:
    return ResultsFile(directory / RESULTS).read()
