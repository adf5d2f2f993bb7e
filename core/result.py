"""What a search returns (:class:`SearchOutcome`) and what a solve returns (:class:`Solution`)."""

from __future__ import annotations

from typing import Any

from attrs import define, field

from .tree import Node, Tree
from .types import Candidate, Task, Usage


@define
class SearchOutcome:
    """A policy's result: every candidate it considered and the one it chose."""

    candidates: list[Candidate]
    chosen: Candidate | None
    meta: dict[str, Any] = field(factory=dict)
    """Strategy-specific figures (e.g. DeepConf's tokens saved)."""


@define
class Solution:
    task: Task
    answer: str | None
    text: str
    score: float | None
    candidates: list[Candidate]
    usage: Usage
    seconds: float
    tree: Tree
    config: dict[str, Any]
    meta: dict[str, Any] = field(factory=dict)
    node_id: int | None = None
    """The tree node the chosen answer ends at (None: the search chose nothing)."""

    @property
    def chosen_node(self) -> Node | None:
        return self.tree[self.node_id] if self.node_id is not None else None

    def to_dict(self, tree: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "task_id": self.task.id,
            "question": self.task.question,
            "answer": self.answer,
            "text": self.text,
            "score": self.score,
            "usage": self.usage.to_dict(),
            "seconds": round(self.seconds, 3),
            "node_id": self.node_id,
            "candidates": [c.to_dict() for c in self.candidates],
            "config": self.config,
            "meta": self.meta,
        }
        if tree:
            data["tree"] = self.tree.to_dict()
        return data
