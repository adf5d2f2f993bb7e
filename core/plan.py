"""A checked config: what :meth:`Runtime.plan <reason.Runtime.plan>` returns and every
solve with an equal config reuses, so a config is checked once instead of by each part
of a solve (checking builds the search policy, which says its sub-policies and width)."""

from __future__ import annotations

import threading

from attrs import field, frozen

from .components import SearchPolicy
from .config import Config
from .registry import PluginRegistry


@frozen
class Plan:
    """A config that passed :meth:`Runtime.validate <reason.Runtime.validate>`, and what
    checking it learnt. Frozen but for :attr:`spare`, which the first search empties."""

    config: Config
    configs: tuple[Config, ...]
    """``config``, then the configs of the sub-policies its search may run."""
    width: int
    """Engine rows one search holds at once (:attr:`SearchPolicy.width`)."""
    spare: list[SearchPolicy] = field(factory=list, eq=False, repr=False)
    """The policy built while checking, unused: the first search takes it."""
    _lock: threading.Lock = field(factory=threading.Lock, eq=False, repr=False)

    def policy(self, registry: PluginRegistry) -> SearchPolicy:
        """A policy no other search has: the spare once, then a new one each time."""
        with self._lock:
            if self.spare:
                return self.spare.pop()
        return registry.create("search", self.config.search, self.config)
