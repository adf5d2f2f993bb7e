"""Where a chat client reads the thinking: ``reasoning_content`` (and ``reasoning``).

Chat clients show a model's reasoning folded, from ``message.reasoning_content`` /
``delta.reasoning_content`` (DeepSeek's API, vLLM's reasoning parsers; vLLM >= 0.11 also
names it ``reasoning``). Behind ``reason serve`` the thinking is the search's: what it
sampled, how the verifier scored it, what it reflected on, pruned and chose. It goes
there as one plain line per progress event (:func:`narrate`) while the search runs, and
for models that think in ``<think>...</think>`` the thinking of the chosen path goes
there too (:class:`ThinkSplitter`); ``content`` keeps the answer.
"""

from __future__ import annotations

from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

FIELDS = ("reasoning_content", "reasoning")
"""Both names, so clients of either convention see it."""


def _scores(scores: list[float], limit: int = 8) -> str:
    shown = ", ".join(f"{s:.2f}" for s in scores[:limit])
    return shown + (f" ... ({len(scores)} in all)" if len(scores) > limit else "")


def _quote(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return f'"{text[:limit]}..."' if len(text) > limit else f'"{text}"'


def narrate(progress: dict[str, Any]) -> str | None:
    """One line (ending in a newline) telling a person what a progress event means; None
    for events not worth a line."""
    kind = progress["type"]
    if kind == "search.started":
        config = progress.get("config") or {}
        verifier = config.get("verifier")
        return f"Searching with {progress['search']} (n={config.get('n')}{f', verifier {verifier}' if verifier else ''}).\n"
    if kind == "steps.generated":
        count = len(progress["node_ids"])
        return f"Wrote {count} step{'s' if count != 1 else ''} ({progress['completion_tokens']} tokens).\n"
    if kind == "steps.scored":
        line = f"{progress['verifier']} scores: {_scores(progress['scores'])}."
        best = progress.get("best") or {}
        if best.get("text"):
            line += f" Best path so far ends: {_quote(best['text'][-200:])}"
        return line + "\n"
    if kind == "reflection":
        return f"Reflecting ({progress['trigger']}): {_quote(progress['text'])}\n"
    if kind == "nodes.pruned":
        count = len(progress["node_ids"])
        return f"Dropped {count} path{'s' if count != 1 else ''} ({progress['reason']}).\n"
    if kind == "answer.found":
        score = progress.get("score")
        return f"A path answers {progress['answer']}{f' (score {score:.2f})' if score is not None else ''}.\n"
    if kind == "search.finished":
        score = progress.get("score")
        return f"Chose {progress['answer']}{f' (score {score:.2f})' if score is not None else ''} after {progress['seconds']:.1f} s.\n"
    return None


def summary(solution: Any) -> str:
    """The whole-response counterpart of the narration: what was searched, the candidates'
    answers with their votes and best scores, and the choice."""
    config = solution.config
    verifier = config.get("verifier")
    lines = [f"Searched with {config.get('search')} (n={config.get('n')}{f', verifier {verifier}' if verifier else ''})."]
    votes: dict[str, list[float | None]] = {}
    for candidate in solution.candidates:
        votes.setdefault(str(candidate.answer), []).append(candidate.score)
    if votes:
        parts = []
        for answer, scores in sorted(votes.items(), key=lambda kv: -len(kv[1])):
            known = [s for s in scores if s is not None]
            parts.append(f"{answer} x{len(scores)}" + (f" (best {max(known):.2f})" if known else ""))
        lines.append(f"{len(solution.candidates)} candidates: " + ", ".join(parts) + ".")
    score = solution.score
    lines.append(f"Chose {solution.answer}{f' (score {score:.2f})' if score is not None else ''}.")
    return "\n".join(lines) + "\n"


def split_think(text: str) -> tuple[str, str]:
    """(thinking, answer) of a whole text: what is inside ``<think>...</think>`` and the rest."""
    splitter = ThinkSplitter()
    parts = splitter.feed(text) + splitter.flush()
    return "".join(t for field, t in parts if field == "reasoning"), "".join(t for field, t in parts if field == "content")


class ThinkSplitter:
    """Routes streamed text to ``reasoning`` while inside ``<think>...</think>`` and to
    ``content`` outside, across deltas that cut a tag in two (a possible partial tag at
    the end of a delta waits for the next one)."""

    def __init__(self) -> None:
        self.thinking = False
        self.pending = ""

    def feed(self, text: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        buffer = self.pending + text
        self.pending = ""
        while buffer:
            tag = THINK_CLOSE if self.thinking else THINK_OPEN
            field = "reasoning" if self.thinking else "content"
            at = buffer.find(tag)
            if at >= 0:
                if at:
                    out.append((field, buffer[:at]))
                buffer = buffer[at + len(tag) :]
                self.thinking = not self.thinking
                continue
            keep = _partial_suffix(buffer, tag)
            if len(buffer) > keep:
                out.append((field, buffer[: len(buffer) - keep]))
            self.pending = buffer[len(buffer) - keep :]
            break
        return out

    def flush(self) -> list[tuple[str, str]]:
        """What is still held back, once the text has ended."""
        pending, self.pending = self.pending, ""
        return [("reasoning" if self.thinking else "content", pending)] if pending else []


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that begins ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0
