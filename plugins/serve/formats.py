"""The response objects of ``reason serve``'s two endpoints: whole responses and SSE
chunks, for chat completions (with reasoning fields) and completions."""

from __future__ import annotations

from typing import Any

from .protocol import new_id, now, usage_dict
from .reasoning import FIELDS as REASONING_FIELDS
from .reasoning import ThinkSplitter, narrate, split_think, summary
from .runner import Choice, total_usage


class Format:
    """Response objects of one endpoint for one request."""

    object = ""
    chunk_object = ""

    def __init__(self, model: str) -> None:
        self.id = new_id(self.prefix)
        self.model = model
        self.created = now()

    prefix = "cmpl"

    def _head(self, object_: str) -> dict[str, Any]:
        return {"id": self.id, "object": object_, "created": self.created, "model": self.model}

    def response(self, choices: list[Choice]) -> dict[str, Any]:
        return {
            **self._head(self.object),
            "choices": [self.whole_choice(c) for c in choices],
            "usage": usage_dict(*total_usage(choices)),
        }

    def chunk(
        self,
        index: int,
        text: str | None,
        *,
        finish: str | None = None,
        extension: dict[str, Any] | None = None,
        usage: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        choice = {"index": index, **self.delta(text), "logprobs": None, "finish_reason": finish}
        if extension is not None and finish is not None:
            choice["reason"] = extension
        data = {**self._head(self.chunk_object), "choices": [choice]}
        if extension is not None and finish is None:
            data["reason"] = extension
        if usage is not None:
            data["usage"] = usage
        return data

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {**self._head(self.chunk_object), "choices": [], "usage": usage}

    def start(self, index: int) -> dict[str, Any] | None:
        return None

    def progress_chunk(self, index: int, progress: dict[str, Any]) -> dict[str, Any]:
        """A progress event: an empty delta with the event in the ``reason`` extension."""
        return self.chunk(index, "", extension=progress)

    def content_chunks(self, index: int, text: str) -> list[dict[str, Any]]:
        return [self.chunk(index, text)]

    def content_end(self, index: int) -> list[dict[str, Any]]:
        """Chunks for text held back until choice ``index``'s content ended."""
        return []

    def delta(self, text: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def whole_choice(self, choice: Choice) -> dict[str, Any]:
        raise NotImplementedError


class ChatFormat(Format):
    """Chat completions. With ``reasoning``, the search's narration and a ``<think>``
    model's thinking go to ``reasoning_content`` / ``reasoning`` (see :mod:`.reasoning`),
    the answer to ``content``; without, everything the model wrote is ``content``."""

    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    prefix = "chatcmpl"

    def __init__(self, model: str, reasoning: bool = True) -> None:
        super().__init__(model)
        self.reasoning = reasoning
        self.splitters: dict[int, ThinkSplitter] = {}

    def _reasoning_chunk(self, index: int, text: str, extension: dict[str, Any] | None = None) -> dict[str, Any]:
        chunk = self.chunk(index, "", extension=extension)
        chunk["choices"][0]["delta"] = dict.fromkeys(REASONING_FIELDS, text)
        return chunk

    def progress_chunk(self, index: int, progress: dict[str, Any]) -> dict[str, Any]:
        line = narrate(progress) if self.reasoning else None
        return self._reasoning_chunk(index, line, progress) if line else super().progress_chunk(index, progress)

    def content_chunks(self, index: int, text: str) -> list[dict[str, Any]]:
        if not self.reasoning:
            return super().content_chunks(index, text)
        parts = self.splitters.setdefault(index, ThinkSplitter()).feed(text)
        return [self._reasoning_chunk(index, t) if field == "reasoning" else self.chunk(index, t) for field, t in parts]

    def content_end(self, index: int) -> list[dict[str, Any]]:
        splitter = self.splitters.pop(index, None)
        parts = splitter.flush() if splitter is not None else []
        return [self._reasoning_chunk(index, t) if field == "reasoning" else self.chunk(index, t) for field, t in parts]

    def start(self, index: int) -> dict[str, Any]:
        chunk = self.chunk(index, "")
        chunk["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        return chunk

    def delta(self, text: str | None) -> dict[str, Any]:
        return {"delta": {"content": text} if text else {}}

    def whole_choice(self, choice: Choice) -> dict[str, Any]:
        message = {"role": "assistant", "content": choice.solution.text}
        if self.reasoning:
            thinking, answer = split_think(choice.solution.text)
            message = {"role": "assistant", "content": answer.lstrip() if thinking else answer}
            message.update(dict.fromkeys(REASONING_FIELDS, summary(choice.solution) + thinking))
        return {
            "index": choice.index,
            "message": message,
            "logprobs": None,
            "finish_reason": choice.finish_reason,
            "reason": choice.extension(),
        }


class CompletionFormat(Format):
    object = "text_completion"
    chunk_object = "text_completion"
    prefix = "cmpl"

    def delta(self, text: str | None) -> dict[str, Any]:
        return {"text": text or ""}

    def whole_choice(self, choice: Choice) -> dict[str, Any]:
        return {
            "index": choice.index,
            "text": choice.solution.text,
            "logprobs": None,
            "finish_reason": choice.finish_reason,
            "reason": choice.extension(),
        }
