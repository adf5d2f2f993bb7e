"""Hidden-state features of every trajectory of a rollout run, for training heads.

One file per problem under ``RUN/features/L<layers>/`` (a problem's eight samples share
their prompt, so its keys and values are computed once): per trajectory the answer's
token states at the spec's layers (float16, ``[tokens, layers, hidden]``) and the token
index where each of its steps ends. Each file is written to a temporary name and renamed,
so an interrupted extraction resumes where it stopped and never reads a half file.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from reason.errors import UsageError

from .features import FeatureSpec, HiddenStateReader
from .labels import TRAJECTORIES, read_trajectories

Progress = Callable[[int, int, float], None]
"""``progress(done, total, seconds_so_far)`` after each problem."""


def features_dir(run_dir: Path, layers: Sequence[int]) -> Path:
    return Path(run_dir) / "features" / ("L" + "-".join(str(k) for k in sorted(layers)))


def file_name(task_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", task_id) + ".safetensors"


def token_ends(tokenizer: Any, token_ids: Sequence[int], steps: Sequence[str]) -> list[int]:
    """For each step, the number of the answer's tokens that cover it (the step's end as a
    token index, exclusive), found by decoding growing prefixes of the ids."""
    offsets, total = [], 0
    for step in steps:
        total += len(step)
        offsets.append(total)
    ends, k = [], 0
    decoded_len = 0
    for offset in offsets:
        while k < len(token_ids) and decoded_len < offset:
            k += 1
            decoded_len = len(tokenizer.decode(list(token_ids[:k])))
        ends.append(max(1, k))
    ends[-1] = max(ends[-1], len(token_ids))
    return [min(end, len(token_ids)) for end in ends]


def group_by_task(trajectories: Iterable[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The trajectories of each problem, in file order. A problem's candidate given twice
    is refused: features are stored per candidate, so one of the two would silently stand
    for both (it happens when two rollout runs that share problems are joined)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    seen: set[tuple[str, int]] = set()
    for trajectory in trajectories:
        key = (trajectory["task_id"], trajectory["candidate"])
        if key in seen:
            raise UsageError(
                f"{TRAJECTORIES} holds candidate {key[1]} of problem {key[0]} twice: were the trajectories of two "
                "rollout runs that share problems concatenated? `reason learn join` keeps one run's trajectories "
                "of each problem"
            )
        seen.add(key)
        groups.setdefault(key[0], []).append(trajectory)
    return list(groups.items())


def extract(
    run_dir: Path,
    spec: FeatureSpec,
    model: str | None,
    device: str | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write the features of the first ``limit`` problems (all by default) of
    ``run_dir/trajectories.jsonl``; problems already written are skipped."""
    import torch
    from safetensors.torch import save_file

    from reason.plugins.backends.models import load_model, load_tokenizer, prompt_ids, resolve_model

    groups = group_by_task(read_trajectories(Path(run_dir) / TRAJECTORIES))[:limit]
    out = features_dir(run_dir, spec.layers)
    out.mkdir(parents=True, exist_ok=True)
    todo = [(task_id, group) for task_id, group in groups if not (out / file_name(task_id)).exists()]
    done = len(groups) - len(todo)
    if not todo:
        return out
    source = resolve_model(model)
    tokenizer = load_tokenizer(source)
    reader = HiddenStateReader(load_model(source, device=device), spec.layers, cache_tokens=8192)
    start = time.perf_counter()
    for task_id, group in todo:
        tensors = {}
        for trajectory in group:
            prompt = prompt_ids(tokenizer, trajectory["prompt"])
            answer = list(trajectory["token_ids"]) or [tokenizer.eos_token_id or 0]
            states = reader.read(prompt + answer)[len(prompt) :]
            k = trajectory["candidate"]
            tensors[f"states.{k}"] = states.to(torch.float16).contiguous()
            tensors[f"ends.{k}"] = torch.tensor(token_ends(tokenizer, answer, trajectory["steps"]), dtype=torch.long)
        target = out / file_name(task_id)
        tmp = target.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"task_id": task_id, "layers": ",".join(map(str, spec.layers))})
        tmp.replace(target)
        done += 1
        if progress is not None:
            progress(done, len(groups), time.perf_counter() - start)
    return out
