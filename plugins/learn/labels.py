"""Labelled trajectories from the runtime's own rollouts.

A rollout run is an eval run over a training set with its trees saved
(``reason learn rollouts``). Every candidate becomes one *trajectory*: the path of tree
nodes that made it, cut into steps (each tree step, further cut at blank lines, so a
whole-solution sample from best-of-n yields the same steps as the ``step`` splitter
would), its graded outcome, and two labels per step:

- ``outcome``: the trajectory's outcome carried to every step (hard labels; Qwen's
  "Lessons of developing PRMs" finds them better than soft ones).
- ``mc``: a Monte-Carlo estimate, Math-Shepherd style: of the candidates whose paths pass
  through the tree node that holds the step, the share that reached the reference. A tree
  search (beam, DVTS, MCTS) shares nodes between candidates, so its estimates come for
  free; for independent samples each node has one candidate, and ``mc`` equals
  ``outcome``. Steps cut out of one node share that node's estimate.

Nothing here runs a model: it reads records, which is why the labels can be tested on a
scripted tree.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from reason.errors import UsageError

TRAJECTORIES = "trajectories.jsonl"
_BLANK_LINE = re.compile(r"\n\s*\n")


def split_paragraphs(text: str) -> list[str]:
    """``text`` cut after each blank line; the pieces join back to ``text`` exactly."""
    pieces, start = [], 0
    for match in _BLANK_LINE.finditer(text):
        if match.end() < len(text):
            pieces.append(text[start : match.end()])
            start = match.end()
    pieces.append(text[start:])
    return [piece for piece in pieces if piece]


def record_trajectories(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The trajectories of one results.jsonl record (which must hold its tree)."""
    tree = record.get("tree")
    if not tree:
        raise UsageError(
            f"{record.get('task_id')}: the record has no search tree; rollouts need `reason eval --save-tree` "
            "(`reason learn rollouts` sets it)"
        )
    nodes = {node["id"]: node for node in tree["nodes"]}
    candidates = record["candidates"]
    # candidates through each node: every node on a candidate's path
    through: dict[int, list[bool]] = {}
    paths = []
    for cand in candidates:
        path = _path(nodes, cand["node"])
        paths.append(path)
        for node_id in path:
            through.setdefault(node_id, []).append(bool(cand["correct"]))
    out = []
    for index, (cand, path) in enumerate(zip(candidates, paths)):
        steps, mc, kinds = [], [], []
        for node_id in path:
            node = nodes[node_id]
            votes = through[node_id]
            for piece in split_paragraphs(node["text"]) or [""]:
                steps.append(piece)
                mc.append(round(sum(votes) / len(votes), 4))
                kinds.append(node["kind"])
        correct = bool(cand["correct"])
        out.append(
            {
                "task_id": record["task_id"],
                "candidate": index,
                "question": record["question"],
                "prompt": tree["prompt"],
                "reference": record["reference"],
                "answer": cand["answer"],
                "correct": correct,
                "steps": steps,
                "step_kinds": kinds,
                "labels": {"outcome": [int(correct)] * len(steps), "mc": mc},
                "token_ids": [t for node_id in path for t in nodes[node_id]["token_ids"]],
                "nodes": path,
            }
        )
    return out


def _path(nodes: dict[int, dict[str, Any]], leaf: int) -> list[int]:
    """Node ids from the first step to ``leaf`` (the root excluded)."""
    path = []
    node_id: int | None = leaf
    while node_id is not None and nodes[node_id]["kind"] != "root":
        path.append(node_id)
        node_id = nodes[node_id]["parent"]
    return path[::-1]


def write_trajectories(records: Iterable[dict[str, Any]], path: Path) -> dict[str, Any]:
    """Write every record's trajectories to ``path``; see :func:`write_problems`."""
    return write_problems((record_trajectories(record) for record in records), path)


def write_problems(problems: Iterable[list[dict[str, Any]]], path: Path) -> dict[str, Any]:
    """Write each problem's trajectories to ``path`` (atomically: a temporary file renamed
    into place) and return counts and the file's SHA-256."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    count = trajectories = right = steps = mixed = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for found in problems:
            count += 1
            outcomes = {t["correct"] for t in found}
            mixed += len(outcomes) == 2
            for trajectory in found:
                fh.write(json.dumps(trajectory, ensure_ascii=False) + "\n")
                trajectories += 1
                right += trajectory["correct"]
                steps += len(trajectory["steps"])
    tmp.replace(path)
    return {
        "problems": count,
        "trajectories": trajectories,
        "right": right,
        "steps": steps,
        "problems_with_mixed_outcomes": mixed,
        "sha256": file_sha256(path),
    }


def read_run(run_dir: Path) -> dict[str, Any]:
    """A rollouts directory's ``run.json``: its ``identity`` (the policy and the search's
    settings) and, for a joined set, the runs it came from."""
    from reason.eval.results import RUN, read_json

    run = read_json(run_dir / RUN)
    if run is None:
        raise UsageError(f"{run_dir} holds no {RUN}: is it a rollouts directory (`reason learn rollouts --out`)?")
    return run


def read_trajectories(path: Path) -> Iterator[dict[str, Any]]:
    """The trajectories in ``path`` (gzipped when its name ends in ``.gz``)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def sft_records(trajectories: Iterable[dict[str, Any]], system_prompt: str | None = None) -> Iterator[dict[str, Any]]:
    """The right trajectories in chat form: a rejection-sampling / SFT dataset (one
    ``{"messages": [...]}`` per line, the shape TRL's SFTTrainer reads)."""
    for trajectory in trajectories:
        if not trajectory["correct"]:
            continue
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages += [
            {"role": "user", "content": trajectory["question"]},
            {"role": "assistant", "content": "".join(trajectory["steps"])},
        ]
        yield {"messages": messages, "task_id": trajectory["task_id"], "candidate": trajectory["candidate"]}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
