"""Training probe heads on labelled rollouts, choosing by held-out problems.

Every number here is cross-validated *by problem* (a problem's samples never sit on both
sides of a split), because a head is used to choose among one problem's candidates:
besides pooled AUROC over all candidates (which also rewards telling easy problems from
hard ones), each fold reports AUROC *within* problems and what choosing by the head
would give (weighted and naive best-of-N against the majority vote on the same samples).

Examples are step prefixes: for every trajectory, the path up to the end of each of its
steps, labelled with the trajectory's outcome (or its Monte-Carlo estimate). The head
that scores a path's last prefix scores the whole candidate.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
from attrs import define, field

from reason.eval.metrics import auroc, average_precision, compute_metrics

from .extract import features_dir, file_name, group_by_task
from .features import FeatureSpec, pooled_width
from .heads import build_head, parameter_count
from .labels import TRAJECTORIES, read_trajectories


class CannotFit(ValueError):
    """A head cannot be fitted on these problems (the message says why)."""


@define
class Sample:
    """One trajectory with its token states (``[tokens, layers, hidden]``, float16)."""

    task_id: str
    answer: str | None
    correct: bool
    states: Any
    ends: list[int]
    labels: list[float]


@define
class Problem:
    task_id: str
    samples: list[Sample] = field(factory=list)


def load_problems(run_dir: Path, layers: Sequence[int], label: str = "outcome") -> list[Problem]:
    """The problems whose features were extracted, with their samples and labels."""
    from safetensors.torch import load_file

    directory = features_dir(run_dir, layers)
    problems = []
    for task_id, group in group_by_task(read_trajectories(Path(run_dir) / TRAJECTORIES)):
        path = directory / file_name(task_id)
        if not path.exists():
            continue
        tensors = load_file(str(path))
        problem = Problem(task_id)
        for t in group:
            k = t["candidate"]
            problem.samples.append(
                Sample(
                    task_id,
                    t["answer"],
                    bool(t["correct"]),
                    tensors[f"states.{k}"],
                    tensors[f"ends.{k}"].tolist(),
                    [float(x) for x in t["labels"][label]],
                )
            )
        problems.append(problem)
    return problems


def folds(problems: Sequence[Problem], k: int, seed: int = 0) -> list[list[int]]:
    """Problem indices split into ``k`` folds, at random with a fixed seed."""
    order = list(range(len(problems)))
    random.Random(seed).shuffle(order)
    return [order[i::k] for i in range(k)]


# -- features for the linear head ----------------------------------------------------------


def pooled(sample: Sample, layer_index: Sequence[int], pooling: str, prefixes: bool) -> Any:
    """``[examples, features]``: the pooled states of each step prefix (or only the whole
    answer when ``prefixes`` is false), at the layers ``layer_index`` picks."""
    import torch

    from .features import pool

    states = sample.states[:, list(layer_index)].float()
    ends = sample.ends if prefixes else [sample.ends[-1]]
    return pool(states, 0, ends, pooling) if len(states) else torch.zeros(len(ends), states.shape[1] * states.shape[2])


def fit_linear(x: Any, y: Any, weight_decay: float, steps: int = 200) -> Any:
    """Logistic regression with an L2 penalty, by L-BFGS on standardized features."""
    import torch

    head = build_head("linear", x.shape[1])
    head.mean.copy_(x.mean(0))
    head.scale.copy_(x.std(0).clamp(min=1e-4))
    positive = y.mean().clamp(1e-3, 1 - 1e-3)
    weights = torch.where(y > 0.5, 0.5 / positive, 0.5 / (1 - positive))  # balance the classes
    optimizer = torch.optim.LBFGS(head.parameters(), lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Any:
        optimizer.zero_grad()
        logits = head(x)
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none") * weights).mean()
        loss = loss + weight_decay * head.out.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return head.eval()


# -- the encoder head ------------------------------------------------------------------------


def encoder_batch(items: Sequence[tuple[Sample, int]], layer_index: Sequence[int], max_tokens: int) -> tuple[Any, Any, Any]:
    """Pad (sample, step) examples into ``x [rows, tokens, features]``, the marker of the
    step's own tokens and the padding mask; paths longer than ``max_tokens`` keep their
    last tokens (the step scored is at the end)."""
    import torch

    rows = []
    for sample, step in items:
        end = sample.ends[step]
        begin = sample.ends[step - 1] if step else 0
        states = sample.states[:end, list(layer_index)].flatten(1).float()
        marker = torch.zeros(end, dtype=torch.long)
        marker[begin:end] = 1
        rows.append((states[-max_tokens:], marker[-max_tokens:]))
    width = max(len(s) for s, _ in rows)
    features = rows[0][0].shape[1]
    x = torch.zeros(len(rows), width, features)
    marker = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.ones(len(rows), width, dtype=torch.bool)
    for u, (states, m) in enumerate(rows):
        x[u, : len(states)] = states
        marker[u, : len(m)] = m
        mask[u, : len(states)] = False
    return x, marker, mask


def fit_encoder(train: Sequence[Problem], layer_index: Sequence[int], config: dict[str, Any], seed: int = 0) -> Any:
    """A ReProbe-style encoder trained with AdamW on the step prefixes of ``train``."""
    import torch

    torch.manual_seed(seed)
    items = [(s, k) for p in train for s in p.samples for k in range(len(s.ends))]
    labels = {id(s): s.labels for p in train for s in p.samples}
    features = items[0][0].states.shape[2] * len(layer_index)
    head = build_head("encoder", features, config)
    sample_states = torch.cat([s.states[:, list(layer_index)].flatten(1).float() for p in train[:50] for s in p.samples])
    head.mean.copy_(sample_states.mean(0))
    head.scale.copy_(sample_states.std(0).clamp(min=1e-4))
    optimizer = torch.optim.AdamW(head.parameters(), lr=float(config.get("lr", 1e-3)), weight_decay=0.01)
    rng = random.Random(seed)
    batch, max_tokens = int(config.get("batch", 32)), int(config.get("max_tokens", 384))
    positive = sum(labels[id(s)][k] for s, k in items) / len(items)
    for _ in range(int(config.get("epochs", 4))):
        rng.shuffle(items)
        head.train()
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            x, marker, mask = encoder_batch(chunk, layer_index, max_tokens)
            y = torch.tensor([labels[id(s)][k] for s, k in chunk])
            w = torch.where(y > 0.5, 0.5 / max(positive, 1e-3), 0.5 / max(1 - positive, 1e-3))
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(head(x, marker, mask), y, reduction="none") * w).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return head.eval()


# -- evaluation -----------------------------------------------------------------------------


def score_problems(
    head: Any, kind: str, problems: Sequence[Problem], layer_index: Sequence[int], pooling: str, max_tokens: int = 384
) -> list[list[list[float]]]:
    """Per problem, per sample, the head's logit at each step prefix."""
    import torch

    out = []
    with torch.inference_mode():
        for problem in problems:
            per_sample = []
            for sample in problem.samples:
                if kind == "linear":
                    per_sample.append(head(pooled(sample, layer_index, pooling, prefixes=True)).tolist())
                else:
                    x, marker, mask = encoder_batch([(sample, k) for k in range(len(sample.ends))], layer_index, max_tokens)
                    per_sample.append(head(x, marker, mask).tolist())
            out.append(per_sample)
    return out


def quality(problems: Sequence[Problem], logits: Sequence[Sequence[Sequence[float]]]) -> dict[str, Any]:
    """Candidate AUROC (pooled and within problems), step-level AUROC and PR-AUC, and
    choosing by the head against the vote, on these problems."""
    records: list[dict[str, Any]] = []
    step_scores: list[float] = []
    step_labels: list[bool] = []
    for problem, per_sample in zip(problems, logits):
        from reason.answers import group_answers

        answers = [s.answer for s in problem.samples]
        groups = group_answers(answers)
        candidates = []
        for sample, values, group in zip(problem.samples, per_sample, groups):
            probability = 1 / (1 + math.exp(-values[-1]))
            candidates.append({"answer": sample.answer, "score": probability, "correct": sample.correct, "group": group})
            for v in values:
                step_scores.append(v)
                step_labels.append(sample.correct)
        records.append(
            {
                "task_id": problem.task_id,
                "kind": "math",
                "candidates": candidates,
                "correct": False,
                "answer": None,
                "usage": {"completion_tokens": 0, "prompt_tokens": 0},
                "seconds": 0.0,
            }
        )
    n = max(len(r["candidates"]) for r in records)
    summary = compute_metrics(records, n)
    right = [v for v, ok in zip(step_scores, step_labels) if ok]
    wrong = [v for v, ok in zip(step_scores, step_labels) if not ok]
    return {
        "problems": len(records),
        "candidate_auroc": summary.get("score_auroc"),
        "candidate_auroc_within": summary.get("score_auroc_within"),
        "problems_mixed": summary.get("problems_mixed"),
        "step_auroc": auroc(right, wrong),
        "step_pr_auc": average_precision(step_scores, step_labels),
        "step_positive_rate": len(right) / len(step_scores) if step_scores else None,
        f"maj@{n}": summary.get(f"maj@{n}"),
        f"weighted@{n}": summary.get(f"weighted@{n}"),
        f"naive@{n}": summary.get(f"naive@{n}"),
        "any_right": sum(1 for r in records if any(c["correct"] for c in r["candidates"])) / len(records),
    }


def platt(logits: Sequence[float], labels: Sequence[bool], steps: int = 200) -> dict[str, float]:
    """Fit sigmoid(a * logit + b) to held-out labels (Platt scaling)."""
    import torch

    z = torch.tensor(list(logits), dtype=torch.float32)
    y = torch.tensor([float(v) for v in labels])
    a = torch.ones(1, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([a, b], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Any:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a * z + b, y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return {"a": a.item(), "b": b.item()}


def held_out_calibration(problems: Sequence[Problem], logits: Sequence[Sequence[Sequence[float]]]) -> dict[str, float]:
    """Platt scaling fitted on held-out logits (every step of every sample, labelled with
    its sample's outcome), so the verifier's probabilities are calibrated on data the head
    did not see."""
    flat: list[float] = []
    labels: list[bool] = []
    for problem, per_sample in zip(problems, logits):
        for sample, values in zip(problem.samples, per_sample):
            flat += values
            labels += [sample.correct] * len(values)
    return platt(flat, labels)


@define
class Candidate:
    """One head configuration to cross-validate."""

    kind: str
    layers: tuple[int, ...]
    pooling: str = "mean"
    weight_decay: float = 1e-3
    prefixes: bool = True
    centred: bool = False
    """Linear only: fit on each problem's features minus their mean, over the problems
    with both outcomes. The head then learns what tells one problem's candidates apart,
    not which problems are hard (what choosing among candidates needs: on GSM8K train
    every centred head's weighted vote beat the plain vote, by 0.5-1.6 points, against
    -0.6 to +1.0 for uncentred ones, see ``benchmarks/results/learn/study-seed1``); its
    pooled AUROC is lower."""
    config: dict[str, Any] = field(factory=dict)

    @property
    def name(self) -> str:
        extra = f" wd={self.weight_decay:g}" if self.kind == "linear" else f" w={self.config.get('width', 128)}"
        flags = ("" if self.prefixes else " final-only") + (" centred" if self.centred else "")
        return f"{self.kind} L{'+'.join(map(str, self.layers))} {self.pooling}{extra}{flags}"


def fit(candidate: Candidate, train: Sequence[Problem], index: Sequence[int]) -> Any:
    import torch

    if candidate.kind != "linear":
        return fit_encoder(train, index, candidate.config)
    xs, ys = [], []
    for problem in train:
        if candidate.centred and len({s.correct for s in problem.samples}) < 2:
            continue  # one outcome only: nothing to tell apart within this problem
        x = torch.cat([pooled(s, index, candidate.pooling, candidate.prefixes) for s in problem.samples])
        xs.append(x - x.mean(0) if candidate.centred else x)
        ys += [torch.tensor(s.labels if candidate.prefixes else s.labels[-1:]) for s in problem.samples]
    if not xs:
        raise CannotFit("no problem with both a right and a wrong trajectory to fit a centred head on")
    return fit_linear(torch.cat(xs), torch.cat(ys).float(), candidate.weight_decay)


def cross_validate(candidate: Candidate, problems: Sequence[Problem], stored: Sequence[int], k: int = 5) -> dict[str, Any]:
    """Held-out quality of ``candidate`` over ``k`` folds by problem (``stored``: the
    layers the features hold, in order), and the held-out logits for calibration."""
    index = [stored.index(layer) for layer in candidate.layers]
    held_logits: list[Any] = [None] * len(problems)
    for fold in folds(problems, k):
        fold_set = set(fold)
        train = [p for i, p in enumerate(problems) if i not in fold_set]
        head = fit(candidate, train, index)
        scored = score_problems(head, candidate.kind, [problems[i] for i in fold], index, candidate.pooling)
        for i, logits in zip(fold, scored):
            held_logits[i] = logits
    result = quality(problems, held_logits)
    result["name"] = candidate.name
    result["logits"] = held_logits
    return result


def head_card(candidate: Candidate, head: Any, spec: FeatureSpec, hidden: int) -> dict[str, Any]:
    return {
        "kind": candidate.kind,
        "features": spec.to_dict(),
        "input_features": hidden * len(candidate.layers) * (pooled_width(candidate.pooling) if candidate.kind == "linear" else 1),
        "config": dict(candidate.config),
        "parameters": parameter_count(head),
    }


# -- choosing, calibrating, saving ----------------------------------------------------------


KINDS = ("linear", "encoder")
"""The head kinds :func:`default_candidates` knows."""


def default_candidates(
    stored: Sequence[int],
    kinds: set[str],
    poolings: Sequence[str],
    centred: bool,
    penalties: Sequence[float],
) -> list[Candidate]:
    """The heads ``reason learn train`` tries: for each pooling and L2 penalty, a linear probe
    on each stored layer and one on all of them together (each also centred, with
    ``centred``); and the encoder on the middle stored layer (it marks the step's tokens
    itself, so it takes no pooling)."""
    out: list[Candidate] = []
    if "linear" in kinds:
        for pooling in poolings:
            groups = [(layer,) for layer in stored] + ([tuple(stored)] if len(stored) > 1 else [])
            out += [Candidate("linear", layers, pooling, weight_decay=wd) for layers in groups for wd in penalties]
        if centred:
            out += [attrs.evolve(c, centred=True) for c in out]
    if "encoder" in kinds:
        middle = stored[len(stored) // 2]
        out.append(Candidate("encoder", (middle,), config={"width": 128, "heads": 4, "epochs": 4, "lr": 1e-3}))
    if not out:
        raise ValueError(f"no head kinds to try in {sorted(kinds)}: {', '.join(KINDS)}")
    return out


def describe(result: dict[str, Any]) -> str:
    n = next((key.split("@")[1] for key in result if key.startswith("maj@")), "?")

    def f(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    return (
        f"candidate AUROC {f(result['candidate_auroc'])} (within problems {f(result['candidate_auroc_within'])}, "
        f"{result['problems_mixed']} mixed), step AUROC {f(result['step_auroc'])} PR-AUC {f(result['step_pr_auc'])}; "
        f"weighted@{n} {f(result.get(f'weighted@{n}'))} naive@{n} {f(result.get(f'naive@{n}'))} "
        f"vs maj@{n} {f(result.get(f'maj@{n}'))} ({result.get('seconds', '?')}s)"
    )


def selection_key(result: dict[str, Any]) -> tuple[float, float]:
    """Heads are chosen by held-out AUROC within problems (what choosing among a problem's
    candidates needs), then pooled AUROC."""
    return (result.get("candidate_auroc_within") or 0.0, result.get("candidate_auroc") or 0.0)


def finish(
    candidate: Candidate, result: dict[str, Any], problems: Sequence[Problem], stored: Sequence[int], model: str | None
) -> tuple[Any, dict[str, Any]]:
    """Calibrate on the held-out logits, refit on every problem, and make the card."""
    from reason.plugins.backends.models import resolve_model, weights_sha256

    calibration = held_out_calibration(problems, result["logits"])
    index = [stored.index(layer) for layer in candidate.layers]
    head = fit(candidate, problems, index)
    spec = FeatureSpec(layers=candidate.layers, pooling=candidate.pooling)
    hidden = problems[0].samples[0].states.shape[2]
    source = resolve_model(model)
    card = head_card(candidate, head, spec, hidden)
    card.update(
        name=candidate.name,
        policy={"name": source.name, "spec": model, "sha256": weights_sha256(source)},
        calibration=calibration,
        metrics={key: value for key, value in result.items() if key != "logits"},
    )
    return head, card


def save(head: Any, card: dict[str, Any], out: Path) -> Path:
    from .heads import save_head

    return save_head(head, card, out)
