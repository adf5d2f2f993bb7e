"""The search tree: every step any strategy generated, scored, reflected on or pruned.

Nodes hold the step (text, tokens, logprobs), verifier scores, and the visit/value
statistics MCTS needs. The root is the prompt. A path is the list of steps from the root
to a node; its text is what the model wrote so far.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
from attrs import define, field

from .types import Step


def _jsonable(value: Any) -> Any:
    """Meta values as JSON data: attrs objects (e.g. the verifier's Score) become dicts."""
    if attrs.has(type(value)):
        return attrs.asdict(value)
    return value


@define(eq=False)
class Node:
    id: int
    step: Step | None
    """``None`` only for the root (the prompt)."""
    parent: Node | None = field(default=None, repr=False)
    children: list[Node] = field(factory=list, repr=False)
    kind: str = "step"
    """``root``, ``step`` or ``reflection``."""
    scores: dict[str, float] = field(factory=dict)
    """Verifier name -> this step's score."""
    visits: int = 0
    value_sum: float = 0.0
    terminal: bool = False
    """The path ends here (EOS, answer, or budget)."""
    pruned: bool = False
    answer: str | None = None
    meta: dict[str, Any] = field(factory=dict)
    """Anything else a strategy wants recorded in the tree (e.g. subtree index)."""
    key: str = ""
    """Where the node sits, named by the requests that made it (``/0.3``: sample 3 of the
    root's first request), not by its id: ids follow the order in which requests finish,
    keys the order in which searches make them. Seeds derive from keys."""
    draws: int = 0
    """How many requests (and reflections) have started from this node so far."""

    @property
    def depth(self) -> int:
        depth, node = 0, self
        while node.parent is not None:
            depth, node = depth + 1, node.parent
        return depth

    @property
    def value(self) -> float:
        """Mean backed-up value (MCTS Q)."""
        return self.value_sum / self.visits if self.visits else 0.0

    def path(self) -> list[Node]:
        """Nodes from the first step to this one (the root excluded)."""
        nodes: list[Node] = []
        node: Node | None = self
        while node is not None and node.step is not None:
            nodes.append(node)
            node = node.parent
        return nodes[::-1]

    def steps(self) -> tuple[Step, ...]:
        return tuple(node.step for node in self.path() if node.step is not None)

    def text(self) -> str:
        """What the model wrote (and was made to write) along the path to this node."""
        return "".join(step.text for step in self.steps())

    def sampled_ids(self) -> tuple[int, ...] | None:
        """The token ids the model sampled along the path to this node, or ``None``
        where some step has text without them (an injected reflection, a backend that
        does not return ids)."""
        ids: list[int] = []
        for step in self.steps():
            if step.text and not step.token_ids:
                return None
            ids += step.token_ids
        return tuple(ids)

    @property
    def reflections(self) -> int:
        return sum(1 for node in self.path() if node.kind == "reflection")

    @property
    def num_tokens(self) -> int:
        return sum(len(step.token_ids) for step in self.steps())

    def to_dict(self) -> dict[str, Any]:
        step = self.step
        return {
            "id": self.id,
            "parent": self.parent.id if self.parent else None,
            "kind": self.kind,
            "depth": self.depth,
            "text": step.text if step else "",
            "tokens": len(step.token_ids) if step else 0,
            "token_ids": list(step.token_ids) if step else [],
            "logprobs": [round(lp, 5) for lp in step.logprobs] if step else [],
            "top_logprobs": [[round(lp, 5) for lp in top] for top in step.top_logprobs] if step else [],
            "finish_reason": step.finish_reason if step else None,
            "scores": dict(self.scores),
            "visits": self.visits,
            "value": self.value,
            "terminal": self.terminal,
            "pruned": self.pruned,
            "answer": self.answer,
            "meta": {key: _jsonable(value) for key, value in self.meta.items()},
            "children": [child.id for child in self.children],
        }


@define(eq=False)
class Tree:
    prompt: str
    nodes: list[Node] = field(factory=list)
    chosen: int | None = None
    """The id of the node that ends the chosen answer's path (set when the search is done)."""

    def __attrs_post_init__(self) -> None:
        if not self.nodes:
            self.nodes.append(Node(id=0, step=None, kind="root"))

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def add(self, parent: Node, step: Step, kind: str = "step", key: str | None = None, **meta: Any) -> Node:
        """Add a child of ``parent``; ``key`` (see :attr:`Node.key`) defaults to one made
        from the new node's id."""
        node_id = len(self.nodes)
        key = f"{parent.key}/#{node_id}" if key is None else key
        node = Node(id=node_id, step=step, parent=parent, kind=kind, meta=dict(meta), key=key)
        parent.children.append(node)
        self.nodes.append(node)
        return node

    def __getitem__(self, node_id: int) -> Node:
        return self.nodes[node_id]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def max_depth(self) -> int:
        return max(node.depth for node in self.nodes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "num_nodes": len(self.nodes),
            "max_depth": self.max_depth,
            "chosen": self.chosen,
            "nodes": [node.to_dict() for node in self.nodes],
        }
