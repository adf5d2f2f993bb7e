"""A search tree (and, where known, its solution) as one self-contained HTML page.

Inputs, as written by the rest of reason:

- a tree: ``reason solve --tree OUT.json`` (:meth:`reason.tree.Tree.to_dict`);
- a solution with its tree (an object with a ``tree`` key, e.g. ``Solution.to_dict(tree=True)``);
- an eval record: one line of ``results.jsonl`` written with ``reason eval --save-tree``;
- an eval run directory (its ``results.jsonl``, and ``run.json`` for the config).

The chosen leaf is found, in order: the tree's own ``chosen`` key (a node id:
``Tree.to_dict`` writes it; older tree files lack it); the solution's candidate whose
``node_id`` ends the chosen text (``reason solve --json`` output, given with
``--solution``); in an eval record, whose candidates carry no node id, the candidate
with the record's answer and score, located by its text: the node whose path text (every
step from the root, concatenated) equals the candidate's text. Without a solution the
page says the chosen path is unknown.

The page inlines its CSS, script and data (each problem a JSON block parsed only when
shown) and declares a content security policy that forbids any network access.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from reason.errors import UsageError

RESULTS = "results.jsonl"
RUN = "run.json"
META_LIMIT = 2000
"""Characters of a node's JSON ``meta`` kept in the page (the rest is cut, marked)."""


# --- reading inputs ---------------------------------------------------------------------


def load_problems(path: str | Path, problem: str | None = None, solution: str | Path | None = None) -> list[dict[str, Any]]:
    """Every problem the input holds, as page data (see :func:`problem_data`).

    ``path``: a tree JSON, a solution/record JSON with a ``tree``, a ``results.jsonl``,
    or an eval run directory. ``problem``: keep only that task id. ``solution``: the
    ``reason solve --json`` output that goes with a bare tree.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(
            f"{path} does not exist: give a tree JSON (reason solve --tree), a results.jsonl or an eval run directory"
        )
    sol = _read_json(Path(solution)) if solution else None
    if path.is_dir():
        results = path / RESULTS
        if not results.exists():
            raise UsageError(
                f"{path} is a directory without {RESULTS}: give an eval run directory (reason eval --out DIR --save-tree)"
            )
        return _from_results(results, problem, _run_config(path))
    if path.suffix == ".jsonl" or path.name.endswith(".jsonl.gz"):
        return _from_results(path, problem, _run_config(path.parent))
    data = _read_json(path)
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a search tree: expected a JSON object with 'nodes' (reason solve --tree OUT.json)")
    if "nodes" in data:
        if problem is not None and sol is not None and str(sol.get("task_id")) != problem:
            raise UsageError(f"--problem {problem}: the solution is for task {sol.get('task_id')!r}")
        task_id = (sol or {}).get("task_id")
        return [problem_data(data, sol, label=str(task_id) if task_id not in (None, "", "cli") else path.stem)]
    if isinstance(data.get("tree"), dict):
        task_id = data.get("task_id")
        return [problem_data(data["tree"], data, label=str(task_id) if task_id not in (None, "", "cli") else path.stem)]
    raise UsageError(f"{path} holds no search tree: write one with `reason solve --tree OUT.json` or `reason eval --save-tree`")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _run_config(directory: Path) -> dict[str, Any]:
    """The config of an eval run (``run.json`` next to ``results.jsonl``), or ``{}``."""
    run = directory / RUN
    if not run.exists():
        return {}
    try:
        data = json.loads(run.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    config = (data.get("identity") or {}).get("config") or data.get("config") or {}
    return config if isinstance(config, dict) else {}


def _read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a results file; the first of a duplicated task id wins (as in eval)."""
    if path.name.endswith(".gz"):
        import gzip

        text = gzip.decompress(path.read_bytes()).decode("utf-8")
    else:
        text = path.read_text(encoding="utf-8")
    records, seen = [], set()
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # a torn last line: a run still writing
                continue
            raise UsageError(f"{path}:{number} is not valid JSON") from None
        key = str(record.get("task_id"))
        if key in seen:
            continue
        seen.add(key)
        records.append(record)
    return records


def _from_results(path: Path, problem: str | None, config: dict[str, Any]) -> list[dict[str, Any]]:
    records = _read_records(path)
    if problem is not None:
        records = [r for r in records if str(r.get("task_id")) == problem]
        if not records:
            ids = [str(r.get("task_id")) for r in _read_records(path)]
            shown = ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "")
            raise UsageError(f"--problem {problem}: no such task in {path} (task ids: {shown or 'none'})")
    with_tree = [r for r in records if isinstance(r.get("tree"), dict)]
    if not with_tree:
        raise UsageError(f"{path} has no search trees: run the eval with --save-tree (reason eval ... --save-tree)")
    problems = []
    for record in records:
        if isinstance(record.get("tree"), dict):
            problems.append(problem_data(record["tree"], record, label=str(record.get("task_id")), config=config))
        else:  # listed, so the problem list matches the run, but there is nothing to draw
            problems.append(_summary(record, label=str(record.get("task_id")), config=config) | {"nodes": None})
    return problems


# --- page data ----------------------------------------------------------------------------


def problem_data(
    tree: dict[str, Any], solution: dict[str, Any] | None = None, label: str = "", config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What the page shows for one problem: slim nodes, candidates, the chosen leaf."""
    if not isinstance(tree.get("nodes"), list) or not tree["nodes"]:
        raise UsageError("the tree has no nodes: expected Tree.to_dict() output (reason solve --tree OUT.json)")
    solution = solution or {}
    data = _summary(solution, label, config)
    data["question"] = data["question"] or tree.get("prompt", "")
    aggregation = str(data["config"].get("aggregation") or "last")
    raw = sorted(tree["nodes"], key=lambda n: n["id"])
    if [n["id"] for n in raw] != list(range(len(raw))):
        raise UsageError("the tree's node ids are not 0..N-1: expected Tree.to_dict() output")
    texts = _PathIndex(raw)
    candidates, how_candidates = _candidates(raw, texts, solution)
    chosen, how = _chosen(tree, raw, texts, solution, candidates)
    data.update(
        nodes=[_slim(node, aggregation) for node in raw],
        num_nodes=len(raw),
        max_depth=max(int(n.get("depth", 0)) for n in raw),
        candidates=candidates,
        candidates_from=how_candidates,
        chosen=chosen,
        chosen_from=how,
        aggregation=aggregation,
    )
    return data


def _summary(solution: dict[str, Any], label: str, config: dict[str, Any] | None) -> dict[str, Any]:
    cfg: dict[str, Any] = solution["config"] if isinstance(solution.get("config"), dict) else (config or {})
    keep = (
        "search",
        "verifier",
        "splitter",
        "reflect",
        "n",
        "beam_width",
        "max_tokens",
        "temperature",
        "aggregation",
        "weighted",
        "model",
        "backend",
        "options",
    )
    return {
        "id": label,
        "question": solution.get("question") or "",
        "reference": solution.get("reference"),
        "answer": solution.get("answer"),
        "correct": solution.get("correct"),
        "score": solution.get("score"),
        "usage": solution.get("usage") or {},
        "seconds": solution.get("seconds"),
        "meta": _cut(solution.get("meta") or {}),
        "config": {key: cfg[key] for key in keep if key in cfg},
    }


class _PathIndex:
    """Find the node whose path text (every step from the root, concatenated, as
    Node.text() gives it) is a given text. Path texts are hashed incrementally (a node's
    hash extends its parent's), so none is built: a deep tree's path texts add up to
    depth times its size. A hash hit is confirmed on the real text."""

    def __init__(self, raw: list[dict[str, Any]]) -> None:
        self.raw = raw
        self._ids: dict[bytes, list[int]] | None = None

    def _build(self) -> dict[bytes, list[int]]:
        hashers: list[Any] = []
        ids: dict[bytes, list[int]] = {}
        for node in self.raw:
            parent = node.get("parent")
            h = hashers[parent].copy() if parent is not None else hashlib.sha1()
            h.update((node.get("text") or "").encode("utf-8", "surrogatepass"))
            hashers.append(h)
            if node.get("kind") != "root":
                ids.setdefault(h.digest(), []).append(node["id"])
        return ids

    def text(self, node_id: int) -> str:
        parts: list[str] = []
        node: int | None = node_id
        while node is not None:
            parts.append(self.raw[node].get("text") or "")
            node = self.raw[node].get("parent")
        return "".join(reversed(parts))

    def find(self, text: str | None) -> int | None:
        """A terminal (or answered) node first, then any; the first in id order."""
        if text is None:
            return None
        if self._ids is None:
            self._ids = self._build()
        matches = [
            i for i in self._ids.get(hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest(), []) if self.text(i) == text
        ]
        terminal = [i for i in matches if self.raw[i].get("terminal") or self.raw[i].get("answer") is not None]
        found = terminal or matches
        return found[0] if found else None


def _candidates(raw: list[dict[str, Any]], texts: _PathIndex, solution: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The candidates, each tied to its node where it can be."""
    given = solution.get("candidates")
    if isinstance(given, list) and given:
        out = []
        for cand in given:
            node = cand.get("node_id")
            if not (isinstance(node, int) and 0 <= node < len(raw)):
                node = texts.find(cand.get("text"))
            out.append(
                {
                    "node": node,
                    "answer": cand.get("answer"),
                    "score": cand.get("score"),
                    "correct": cand.get("correct"),
                    "group": cand.get("group"),
                }
            )
        return out, "solution"
    # no solution: every finished path with an answer stands for a candidate
    out = [
        {"node": n["id"], "answer": n.get("answer"), "score": None, "correct": None, "group": None}
        for n in raw
        if n.get("answer") is not None
    ]
    return out, "tree"


def _chosen(
    tree: dict[str, Any], raw: list[dict[str, Any]], texts: _PathIndex, solution: dict[str, Any], candidates: list[dict[str, Any]]
) -> tuple[int | None, str]:
    recorded = tree.get("chosen")
    if isinstance(recorded, int) and 0 <= recorded < len(raw):
        return recorded, "recorded in the tree"
    if not solution:
        return (
            None,
            "unknown: the tree alone does not say which leaf was chosen (give the solution: reason solve --json ... > SOL.json, then reason view TREE.json --solution SOL.json)",
        )
    text, answer, score = solution.get("text"), solution.get("answer"), solution.get("score")
    given = solution.get("candidates") or []
    # solve --json: the candidate (with its node id) whose text is the chosen text
    for cand in given:
        node = cand.get("node_id")
        if isinstance(node, int) and 0 <= node < len(raw) and text is not None and cand.get("text") == text:
            return node, "the solution's candidate with the chosen text"
    node = texts.find(text)
    if node is not None:
        return node, "the node whose path text is the solution's text"
    # an eval record: the candidate with the chosen answer and score, found by its text
    for cand, info in zip(given, candidates):
        if cand.get("answer") == answer and _same(cand.get("score"), score) and info["node"] is not None:
            return info["node"], "the candidate with the record's answer and score, matched to its node by text"
    return None, "unknown: no candidate of the solution matches a node of the tree"


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return a == b


def _slim(node: dict[str, Any], aggregation: str) -> dict[str, Any]:
    """One node for the page: what it shows, in short keys (token ids and top-k dropped)."""
    meta = dict(node.get("meta") or {})
    score = meta.pop("score", None)
    step_scores = list(score.get("step_scores") or []) if isinstance(score, dict) else []
    logprobs = node.get("logprobs") or []
    slim: dict[str, Any] = {
        "p": node.get("parent"),
        "k": node.get("kind") or "step",
        "d": node.get("depth", 0),
        "t": node.get("text") or "",
        "n": node.get("tokens") or 0,
    }
    if node.get("scores"):
        slim["s"] = {name: _round(value) for name, value in node["scores"].items()}
    if step_scores:
        slim["ss"] = [_round(v) for v in step_scores]
        slim["ps"] = _round(_aggregate(step_scores, aggregation))
    if isinstance(score, dict):
        if score.get("feedback"):
            slim["fb"] = str(score["feedback"])[:META_LIMIT]
        if score.get("passed") is not None:
            slim["ok"] = bool(score["passed"])
    if node.get("visits"):
        slim["v"] = node["visits"]
        slim["q"] = _round(node.get("value") or 0.0)
    if node.get("terminal"):
        slim["T"] = 1
    if node.get("pruned"):
        slim["P"] = 1
    if node.get("answer") is not None:
        slim["a"] = node["answer"]
    if node.get("finish_reason"):
        slim["f"] = node["finish_reason"]
    if logprobs:
        slim["lp"] = _round(sum(logprobs) / len(logprobs))
    if meta:
        slim["m"] = _cut(meta)
    return slim


def _aggregate(values: list[float], how: str) -> float:
    from reason import aggregate

    try:
        return aggregate(values, how)
    except Exception:  # an aggregation this version does not know: fall back to the last score
        return float(values[-1])


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def _cut(value: Any) -> Any:
    """JSON meta as is when small; otherwise its text, cut to :data:`META_LIMIT`."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) <= META_LIMIT:
        return json.loads(text)
    return {"(cut)": text[:META_LIMIT] + " ..."}


# --- the page -------------------------------------------------------------------------------


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element: no '<' can open a tag or close the element."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def render_html(problems: list[dict[str, Any]], title: str = "reason view", source: str = "") -> str:
    """The page: template + inlined CSS and script + one JSON block per problem."""
    if not problems:
        raise UsageError("nothing to show: no problem with a search tree")
    index = {
        "title": title,
        "source": source,
        "problems": [
            {
                "id": p["id"],
                "answer": p.get("answer"),
                "correct": p.get("correct"),
                "nodes": p.get("num_nodes") if p.get("nodes") is not None else None,
            }
            for p in problems
        ],
    }
    blocks = [f'<script type="application/json" id="rv-index">{_script_json(index)}</script>']
    for i, problem in enumerate(problems):
        blocks.append(f'<script type="application/json" id="rv-p{i}">{_script_json(problem)}</script>')
    page = _asset("page.html")
    for key, value in (
        ("/*__CSS__*/", _asset("viewer.css")),
        ("/*__JS__*/", _asset("viewer.js").replace("</", "<\\/")),
        ("<!--__DATA__-->", "\n".join(blocks)),
        ("__TITLE__", html.escape(title)),
    ):
        page = page.replace(key, value, 1)
    return page


def default_out(path: str | Path, problem: str | None = None) -> Path:
    """Next to the input: ``tree.json`` -> ``tree.html``; a run directory -> ``DIR/view.html``."""
    path = Path(path)
    suffix = f"-{_safe(problem)}" if problem else ""
    if path.is_dir():
        return path / f"view{suffix}.html"
    name = path.name
    for ext in (".jsonl.gz", ".jsonl", ".json"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return path.with_name(f"{name}{suffix}.html")


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def write_view(
    path: str | Path, out: str | Path | None = None, problem: str | None = None, solution: str | Path | None = None
) -> tuple[Path, list[dict[str, Any]]]:
    """Read ``path``, write the page (atomically) to ``out`` or next to the input."""
    problems = load_problems(path, problem, solution)
    target = Path(out) if out else default_out(path, problem)
    shown = [p for p in problems if p.get("nodes") is not None]
    title = f"reason view · {shown[0]['id']}" if len(problems) == 1 else f"reason view · {Path(path).name} ({len(shown)} trees)"
    page = render_html(problems, title=title, source=str(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(target)
    return target, problems
