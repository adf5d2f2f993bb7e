"""How a task becomes chat messages. Kept apart so users can read (and override with
``system_prompt``) exactly what the model is told."""

from __future__ import annotations

from .types import Task

MATH_SYSTEM = "Solve the problem step by step. Separate the steps with a blank line. Finish with: The answer is \\boxed{ANSWER}."
CODE_SYSTEM = (
    "You are an expert Python programmer. Complete the function. Reply with the whole function in one ```python code block."
)


def messages_for(task: Task, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The chat messages that ask the model to solve ``task``: the system prompt, the
    task's earlier turns (``history``), then the question."""
    if task.kind == "code":
        system = system_prompt or CODE_SYSTEM
        user = task.metadata.get("prompt") or task.question
        user = f"```python\n{user}\n```" if "```" not in user else user
    else:
        system = system_prompt or MATH_SYSTEM
        user = task.question
    return [{"role": "system", "content": system}, *task.history, {"role": "user", "content": user}]
