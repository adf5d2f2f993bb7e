"""From an OpenAI request to what the runtime runs: the strategy and its settings, and
the task.

Precedence, lowest first: the server's recipe and flags; the strategy named by the
model (``beam/SmolLM2-135M-Instruct``, or a bare ``beam``); OpenAI's own fields
(``temperature``, ``top_p``, ``max_tokens``, ``seed``); the ``reason`` extension
(``extra_body={"reason": {...}}`` in the ``openai`` client). Every name is checked
against the registry before anything runs, and a bad one becomes a 400 that lists the
available ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attrs import frozen

from reason import Config, Runtime, Task, UsageError
from reason.component_cache import BACKEND_FIELDS
from reason.config import MOVED

from .protocol import APIError, ChatMessage

SERVER_FIELDS = BACKEND_FIELDS
"""Config fields fixed when the server starts: one model is loaded, for every request
(a Runtime's backend settings; its backend options are fixed too)."""

EXTENSION_KEYS = ("kind", "progress", "reasoning")
"""``reason`` keys that are not Config fields: the task kind (``math`` | ``code``),
whether a stream carries progress events, and whether a chat answer puts the search's
narration and the model's thinking in ``reasoning_content`` (the server's choice when
unset)."""

TASK_KINDS = ("math", "code")


@frozen
class Selection:
    """What one request runs: Config overrides for ``Runtime.asolve`` / ``stream`` (already
    validated against the registry), the resulting config, and the server-level extras."""

    overrides: dict[str, Any]
    config: Config
    kind: str = "math"
    progress: bool = True
    reasoning: bool | None = None

    @property
    def search(self) -> str:
        return self.config.search


def searches(runtime: Runtime) -> list[str]:
    return runtime.registry.names("search")


def model_ids(runtime: Runtime, served: str) -> list[str]:
    """Every model id a request may name: the served model (the server's default
    strategy) and STRATEGY/MODEL for each registered strategy."""
    return [served, *(f"{name}/{served}" for name in searches(runtime))]


def strategy_from_model(runtime: Runtime, served: str, model: str | None) -> str | None:
    """The strategy a model name asks for (None: the server's default)."""
    if not model or model.lower() == served.lower():
        return None
    prefix, sep, rest = model.partition("/")
    if sep and rest.lower() == served.lower():
        return prefix  # checked against the registry with the rest of the config
    try:
        runtime.registry.lookup("search", model)
        return model  # a bare strategy name: "beam", "best-of-n"
    except UsageError:
        pass
    available = ", ".join(model_ids(runtime, served))
    raise APIError(
        f"The model {model!r} does not exist. This server runs {served!r}; ask for one of: {available}"
        f" (or set the strategy with extra_body={{'reason': {{'search': ...}}}}).",
        404,
        param="model",
        code="model_not_found",
    )


def select(
    runtime: Runtime,
    served: str,
    model: str | None,
    sampling: dict[str, Any],
    extension: dict[str, Any] | None,
    allow_options: bool = False,
) -> Selection:
    """Resolve and validate a request's strategy and settings (see the module docstring).
    ``sampling`` holds the OpenAI fields that were set (temperature, top_p, max_tokens,
    seed). ``reason.options`` (plugin settings) only with ``allow_options``: they are
    checked against the components the request runs, and options that change a verifier
    or splitter build another one, which the runtime keeps for the server's life (a PRM
    on another model is another model in memory), so only trusted clients may set them."""
    overrides: dict[str, Any] = {}
    strategy = strategy_from_model(runtime, served, model)
    if strategy is not None:
        overrides["search"] = strategy
    overrides.update({k: v for k, v in sampling.items() if v is not None})
    kind, progress, reasoning = "math", True, None
    if extension is not None:
        if not isinstance(extension, dict):
            raise APIError('\'reason\' must be an object, e.g. {"search": "beam", "n": 8}', param="reason")
        allowed = sorted((Config.field_names() | set(MOVED)) - set(SERVER_FIELDS)) + list(EXTENSION_KEYS)
        for key, value in extension.items():
            if key in SERVER_FIELDS:
                raise APIError(
                    f"reason.{key} is fixed when the server starts (reason serve --{key} ...); "
                    "a request picks the strategy, not the model",
                    param=f"reason.{key}",
                )
            if key not in allowed:
                raise APIError(f"unknown field reason.{key}; known fields: {', '.join(allowed)}", param=f"reason.{key}")
            if key == "options" and value and not allow_options:
                search = str(extension.get("search") or overrides.get("search") or runtime.config.search).partition(":")[0]
                others = [k for k, v in value.items() if not _of_search(k, v, search)] if isinstance(value, dict) else ["options"]
                if others:
                    raise APIError(
                        f"reason.options.{others[0]} is refused: this server was started without --request-options, "
                        f'so a request sets only its search\'s options (e.g. {{"{search}": {{...}}}}); '
                        "the server's own options apply to every request",
                        param=f"reason.options.{others[0]}",
                    )
            if key == "kind":
                if value not in TASK_KINDS:
                    raise APIError(f"reason.kind must be one of {', '.join(TASK_KINDS)}, got {value!r}", param="reason.kind")
                kind = value
            elif key in ("progress", "reasoning"):
                if not isinstance(value, bool):
                    raise APIError(f"reason.{key} must be true or false", param=f"reason.{key}")
                if key == "progress":
                    progress = value
                else:
                    reasoning = value
            elif key == "reflect" and isinstance(value, str):
                overrides[key] = (value,)
            else:
                overrides[key] = value
    try:
        config = runtime.config.replace(**overrides)
        runtime.validate(config)
    except UsageError as exc:
        param = _param_of(exc, overrides)
        if param == "reason.search" and strategy is not None and "search" not in (extension or {}):
            param = "model"  # the strategy came from the model name
        raise APIError(str(exc), param=param) from None
    except (TypeError, ValueError) as exc:
        raise APIError(f"invalid reason settings: {exc}", param="reason") from None
    return Selection(overrides=overrides, config=config, kind=kind, progress=progress, reasoning=reasoning)


def _of_search(key: str, value: Any, search: str) -> bool:
    """Whether option ``key`` belongs to the request's search policy: a policy is built for
    each search and keeps nothing, so any client may set its options, where a verifier's
    or splitter's would build another one kept for the server's life."""
    return key == search and isinstance(value, dict) or key.startswith(search + ".")


def _param_of(error: UsageError, overrides: dict[str, Any]) -> str | None:
    """The request field ``error`` is about (``reason.n``, ``reason.options.beam.width``);
    a field of earlier releases that the request gave by its old name keeps that name."""
    param = error.param
    if param is None:
        return None
    key = param.removeprefix("options.")
    if key in MOVED and key in overrides:
        return f"reason.{key}"
    return f"reason.{param}"


# -- tasks ---------------------------------------------------------------------------


def _text(message: ChatMessage, index: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") in ("text", "input_text") and isinstance(part.get("text"), str):
            parts.append(part["text"])
        else:
            raise APIError(
                f"messages[{index}]: only text content is supported, got a {part.get('type')!r} part",
                param=f"messages.{index}.content",
            )
    return "".join(parts)


def question_from_messages(messages: Sequence[ChatMessage]) -> tuple[str, list[dict[str, str]], str | None]:
    """The question to solve (the user's last message), the turns before it (user and
    assistant messages, for the chat template) and the client's system prompt (None: the
    server's): system and developer messages replace the server's system prompt."""
    system = [_text(m, i) for i, m in enumerate(messages) if m.role in ("system", "developer")]
    turns = [(i, m) for i, m in enumerate(messages) if m.role not in ("system", "developer")]
    for i, m in turns:
        if m.role not in ("user", "assistant"):
            raise APIError(f"messages[{i}]: {m.role} messages are not supported (no tools)", param=f"messages.{i}.role")
    if not turns or turns[-1][1].role != "user":
        raise APIError(
            "the last message must be the user's: reason serve answers the user's last message",
            param="messages",
        )
    last_index, last = turns[-1]
    question = _text(last, last_index)
    if not question.strip():
        raise APIError("the user's last message is empty", param=f"messages.{last_index}.content")
    history = [{"role": m.role, "content": _text(m, i)} for i, m in turns[:-1]]
    return question, history, ("\n\n".join(system) if system else None)


def make_task(question: str, task_id: str, kind: str, history: Sequence[dict[str, str]] = ()) -> Task:
    if not question or not question.strip():
        raise APIError("the prompt is empty", param="prompt")
    return Task(question=question, id=task_id, kind=kind, history=tuple(history))
