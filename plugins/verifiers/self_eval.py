"""The ``self-eval`` verifier: a language model judges each step (or the solution).

For every step the judge model (by default the policy model itself) is asked, in its
chat template, whether the latest step is correct given the problem and the steps before
it; the step's score is P(Yes) normalised over Yes and No at the first token of the
reply: sum P(yes variants) / (sum P(yes variants) + sum P(no variants)), where the
variants are "Yes"/" Yes"/"yes"/" yes" (and the same for No) that are single tokens.

Like the PRM, it scores whole batches, and a step judged once is never judged again:
the verdict on step k depends only on the question and steps 1..k, so it is cached by
prefix (beam search re-scores growing paths every round).

The judge is the policy model unless ``self-eval:MODEL`` or ``-o self-eval.model`` names
another; ``-o self-eval.scope=solution`` judges only the whole path once (earlier steps
score 1.0, so ``last``, ``min`` and ``prod`` aggregation all give the verdict). A judge
prompt may use ``{question}``, ``{previous}`` (the steps before the latest), ``{step}``
and ``{solution}`` (all steps so far); the defaults are :data:`STEP_PROMPT` and
:data:`SOLUTION_PROMPT`. The options are :class:`SelfEvalVerifier.Options`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from reason.errors import UsageError
from reason.log import get_logger
from reason.options import Option
from reason.types import Score, ScoreRequest

from .model_verifier import ModelVerifier, ScoringOptions, prefix_keys
from .scoring import ModelReader, Row, pad_id

log = get_logger("reason")

STEP_PROMPT = (
    "Check one step of a solution to a math problem.\n\n"
    "Problem:\n{question}\n\n"
    "Previous steps:\n{previous}\n\n"
    "Latest step:\n{step}\n\n"
    "Is the latest step correct? Answer Yes or No."
)
SOLUTION_PROMPT = (
    "Check a solution to a math problem.\n\n"
    "Problem:\n{question}\n\n"
    "Solution:\n{solution}\n\n"
    "Is this solution correct? Answer Yes or No."
)
PLACEHOLDERS = ("{question}", "{previous}", "{step}", "{solution}")
YES = ("Yes", " Yes", "yes", " yes", "YES")
NO = ("No", " No", "no", " no", "NO")
SCOPES = ("step", "solution")


def fill(template: str, question: str, steps: Sequence[str]) -> str:
    """The judge's prompt for the last of ``steps``. Plain replacement, not ``str.format``,
    so LaTeX braces in a custom prompt need no escaping."""
    previous = "\n".join(steps[:-1]) or "(none)"
    values = {
        "{question}": question.strip(),
        "{previous}": previous,
        "{step}": steps[-1] if steps else "",
        "{solution}": "\n".join(steps),
    }
    text = template
    for name, value in values.items():
        text = text.replace(name, value)
    return text


def answer_ids(tokenizer: Any, words: Sequence[str]) -> tuple[int, ...]:
    """Ids of the variants of a one-word answer that are a single token."""
    ids: list[int] = []
    for word in words:
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if len(encoded) == 1 and encoded[0] not in ids:
            ids.append(int(encoded[0]))
    return tuple(ids)


class SelfEvalVerifier(ModelVerifier):
    """Asks a causal LM whether each step is correct; score = P(Yes) over Yes/No."""

    class Options(ScoringOptions):
        prefix = "self_eval_"
        model = Option(str, None, help="the judge: HF dir, hub id or .gguf [--verifier self-eval:MODEL, else --model]")
        scope = Option(str, "step", choices=SCOPES, help="judge every step, or only the whole solution")
        prompt = Option(str, None, help="the question put to the judge, with {question} {previous} {step} {solution}")

    options: Options

    def __init__(self, config: Any, arg: str | None = None, **kwargs: Any) -> None:
        super().__init__(config, arg, **kwargs)
        from reason.plugins.backends.models import resolve_model

        self.source = resolve_model(arg or self.options.model or config.model)
        self.scope = self.options.scope
        default = STEP_PROMPT if self.scope == "step" else SOLUTION_PROMPT
        self.prompt = self.options.prompt or default
        if not any(p in self.prompt for p in PLACEHOLDERS):
            raise UsageError(
                "verifier self-eval: -o self-eval.prompt must contain at least one of "
                f"{', '.join(PLACEHOLDERS)} (otherwise the judge never sees the solution)"
            )
        self.namespace = f"self-eval|{self.source.key}|{self.scope}|{self.prompt}"

    def load(self) -> None:
        if self._model is not None:
            return
        from reason.plugins.backends.models import load_model, load_tokenizer

        tokenizer = load_tokenizer(self.source)
        yes, no = answer_ids(tokenizer, YES), answer_ids(tokenizer, NO)
        if not yes or not no:
            raise UsageError(
                f"verifier self-eval: the tokenizer of {self.source.name} has no single-token Yes/No; use another -o self-eval.model"
            )
        model = load_model(self.source, device=self.device, dtype=self.dtype)
        self._reader = ModelReader(
            model, head="lm", labels=(yes, no), batch_size=self.batch_size, pad_id=pad_id(tokenizer), kv_tokens=self.kv_tokens
        )
        self._tokenizer, self._model = tokenizer, model

    def judge_input(self, question: str, steps: Sequence[str]) -> list[int]:
        """Token ids of the judge prompt for the last of ``steps``, ending where the
        judge's reply begins."""
        self.load()
        messages = [{"role": "user", "content": fill(self.prompt, question, steps)}]
        tokenizer = self._tokenizer
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return list(tokenizer.encode(text, add_special_tokens=False))
        return list(tokenizer.encode(messages[0]["content"] + "\nAnswer:", add_special_tokens=True))

    def _score(self, requests: Sequence[ScoreRequest]) -> list[Score]:
        start = time.perf_counter()
        results: dict[bytes, float] = {}
        scheduled: set[bytes] = set()
        per_request: list[tuple[list[bytes], int]] = []
        jobs: list[tuple[bytes, str, list[str]]] = []
        cached = 0
        for request in requests:
            steps = [step.text.strip() for step in request.steps]
            keys = prefix_keys(self.namespace, request.task.question, steps)
            # solution scope judges only the whole path; its earlier steps are not judged
            first = 0 if self.scope == "step" else max(0, len(steps) - 1)
            per_request.append((keys, first))
            for k in range(first, len(keys)):
                key = keys[k]
                value = self.cache.get(key)
                if value is not None:
                    results[key] = value
                    cached += 1
                elif key in scheduled:
                    cached += 1
                else:
                    scheduled.add(key)
                    jobs.append((key, request.task.question, steps[: k + 1]))
        read = None
        if jobs:
            self.load()
            rows = []
            for _, question, steps in jobs:
                ids = self.judge_input(question, steps)
                rows.append(Row(ids, [len(ids) - 1]))
            assert self._reader is not None
            read = self._reader.read(rows)
            for (key, _, _), (value,) in zip(jobs, read.values):
                value = min(1.0, max(0.0, float(value)))
                results[key] = value
                self.cache.put(key, value)
        scores = [
            Score(step_scores=tuple(1.0 if k < first else results[key] for k, key in enumerate(keys)))
            for keys, first in per_request
        ]
        self.last_call = self.stats.record(len(requests), cached, len(jobs), read, time.perf_counter() - start)
        log.debug("verifier scored", verifier=getattr(self, "spec", "self-eval"), **self.last_call)
        return scores
