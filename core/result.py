"""What a search returns (:class:`SearchOutcome`) and what a solve returns (:class:`Solution`)."""

from __future__ import annotations

from typing import Any

from attrs import define, field

from .tree import Tree
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

    def to_dict(self, tree: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "task_id": self.task.id,
            "question": self.task.question,
            "answer": self.answer,
            "text": self.text,
            "score": self.score,
            "usage": self.usage.to_dict(),
            "seconds": round(self.seconds, 3),
            "candidates": [c.to_dict() for c in self.candidates],
            "config": self.config,
            "meta": self.meta,
        }
        if tree:
            data["tree"] = self.tree.to_dict()
        return data
