"""Built-in reflection triggers: when to make the model reconsider, and with what text.

- ``marco``: Marco-o1's "Wait! Maybe I made some mistakes! I need to rethink from
  scratch." at the end of a thought (a finished path, or a step that gives the answer).
- ``low-confidence:T``: after a step whose mean token confidence (Marco-o1's c_i, see
  :mod:`reason.plugins.verifiers.confidence`) is below T (default 0.5).
- ``on-verifier-fail``: when the verifier rejects a path (``Score.passed is False``, or
  its score is below ``-o on-verifier-fail.threshold`` when that is set), inject the verifier's
  feedback and let the model fix it. From the ``sandbox`` verifier that is the failing
  public test (the assert, what the call returned or raised, what was expected), or how
  the program died; never a hidden test, which the verifier does not run. An
  unverified path (a code task without public tests: ``passed is None``) is not a
  failure; the threshold is for verifiers without exact verdicts (its 0.5 for
  unverified paths would read as a score). Runs where a policy calls
  ``ctx.reflect_after_score``. The feedback is cut to its head, where the first failing
  test is.
- ``budget-forcing`` (s1, ``budget-forcing:MIN[:MAX]``): for models that think inside
  ``<think>...</think>``. ``</think>`` becomes a stop string; when the model tries to end
  its thinking (or the text) before MIN tokens (128), the delimiter is dropped and "Wait"
  appended; at MAX (no cap) the answer is forced with "</think>\\n\\nThe answer is".

Each trigger's options (texts, caps) are on its ``Options`` class; ``reason plugins``
lists them.

Each trigger counts only its own reflections on a path when it caps itself, and never
fires right after an injected text or when the path has no room left to continue.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

import reason
from reason import Config, ReflectionTrigger, SamplingParams, Score, Step, Task, aggregate, hookimpl
from reason.errors import UsageError
from reason.options import Option
from reason.plugins.search.common import has_answer
from reason.plugins.verifiers.confidence import step_confidence

MIN_ROOM = 16
"""Tokens a path must still have in its budget for a reflection to be worth injecting."""

MARCO_PHRASE = "Wait! Maybe I made some mistakes! I need to rethink from scratch."
LOW_CONFIDENCE_PHRASE = "Wait, I am not sure about that step. Let me check it again."
FAIL_TEMPLATE = "Wait, this is not right. {feedback}\nLet me fix it."
FAIL_GENERIC = "Wait, a check says this is not right. Let me fix it."


def _separator(text: str) -> str:
    """Blank-line separation between what the model wrote and an injected thought."""
    if not text or text.endswith("\n\n"):
        return ""
    return "\n" if text.endswith("\n") else "\n\n"


class _Trigger(ReflectionTrigger):
    """Shared bookkeeping: recognise this trigger's own injections, check the budget."""

    def __init__(self, config: Config, arg: str | None = None, **kwargs: Any) -> None:
        super().__init__(config, arg, **kwargs)
        self._mine: set[str] = set()

    def count(self, steps: Sequence[Step]) -> int:
        return sum(1 for step in steps if step.injected and step.text in self._mine)

    def room(self, steps: Sequence[Step]) -> bool:
        used = sum(len(step.token_ids) for step in steps)
        return self.config.max_tokens - used >= MIN_ROOM

    def fresh(self, steps: Sequence[Step]) -> bool:
        """There is a generated step to react to, and room to continue after it."""
        return bool(steps) and not steps[-1].injected and self.room(steps)

    def text(self, before: str, body: str, after: str = "\n\n", separator: str | None = None) -> str:
        """The text to inject after ``before``, remembered as this trigger's own."""
        text = (_separator(before) if separator is None else separator) + body + after
        self._mine.add(text)
        return text


class MarcoReflection(_Trigger):
    """Marco-o1: ask the model to rethink at the end of a thought."""

    class Options(reason.Options):
        prefix = "marco_"
        phrase = Option(str, MARCO_PHRASE, help="the text injected at the end of a thought")
        max = Option(int, 1, minimum=0, help="reflections per path")

    options: Options

    def on_step(self, task: Task, steps: Sequence[Step], score: Score | None, reflections: int) -> str | None:
        if task.kind == "math" and steps and has_answer(steps[-1].text):
            return self.on_finish(task, steps, score, reflections)
        return None

    def on_finish(self, task: Task, steps: Sequence[Step], score: Score | None, reflections: int) -> str | None:
        if not self.fresh(steps) or self.count(steps) >= self.options.max:
            return None
        return self.text("".join(s.text for s in steps), self.options.phrase)


class LowConfidenceReflection(_Trigger):
    """Reflect after a step the model was unsure of (mean token confidence < T)."""

    class Options(reason.Options):
        prefix = "low_confidence_"
        threshold = Option(
            float,
            0.5,
            minimum=0,
            maximum=1,
            help="reflect below this step confidence (or low-confidence:T)",
        )
        phrase = Option(str, LOW_CONFIDENCE_PHRASE, help="the text injected")
        max = Option(int, 1, minimum=0, help="reflections per path")

    options: Options

    def __init__(self, config, arg=None, **kwargs):
        super().__init__(config, arg, **kwargs)
        if arg is None:
            self.threshold = self.options.threshold
        else:
            try:
                self.threshold = float(arg)
            except ValueError:
                raise UsageError(f"low-confidence takes a threshold in [0, 1], e.g. low-confidence:0.5 (got {arg!r})") from None
            if not 0 <= self.threshold <= 1:
                raise UsageError(f"low-confidence: the threshold must be in [0, 1], got {self.threshold}")

    def on_step(self, task: Task, steps: Sequence[Step], score: Score | None, reflections: int) -> str | None:
        if not self.fresh(steps) or self.count(steps) >= self.options.max:
            return None
        confidence = step_confidence(steps[-1])
        if confidence is None or confidence >= self.threshold:
            return None
        return self.text("".join(s.text for s in steps), self.options.phrase)

    on_finish = on_step


class VerifierFailReflection(_Trigger):
    """Feed a verifier's rejection (and its feedback) back to the model."""

    class Options(reason.Options):
        prefix = "fail_"
        threshold = Option(
            float,
            None,
            minimum=0,
            maximum=1,
            help="also reflect when the path score is below this [only failed verdicts]",
        )
        template = Option(str, FAIL_TEMPLATE, help="the text injected; must contain {feedback}")
        max = Option(int, 1, minimum=0, help="reflections per path")
        feedback_chars = Option(int, 1500, minimum=1, help="the verifier's feedback is cut to this many characters")

    options: Options

    def __init__(self, config, arg=None, **kwargs):
        super().__init__(config, arg, **kwargs)
        if "{feedback}" not in self.options.template:
            raise UsageError("-o on-verifier-fail.template must contain {feedback}")

    def failed(self, score: Score) -> bool:
        if score.passed is False:
            return True
        threshold = self.options.threshold
        if threshold is None or not score.step_scores:
            return False
        return aggregate(score.step_scores, self.config.aggregation) < threshold

    def on_step(self, task: Task, steps: Sequence[Step], score: Score | None, reflections: int) -> str | None:
        if score is None or not self.failed(score):
            return None
        if not self.fresh(steps) or self.count(steps) >= self.options.max:
            return None
        feedback = (score.feedback or "").strip()
        cut = self.options.feedback_chars
        if len(feedback) > cut:
            feedback = feedback[:cut] + " ..."
        body = self.options.template.format(feedback=feedback) if feedback else FAIL_GENERIC
        return self.text("".join(s.text for s in steps), body)

    on_finish = on_step


class BudgetForcing(_Trigger):
    """s1 budget forcing: keep the model thinking until a minimum, stop it at a maximum."""

    class Options(reason.Options):
        min_thinking_tokens = Option(
            int,
            None,
            minimum=0,
            help="keep thinking until this many tokens [budget-forcing:MIN, else 128]",
        )
        max_thinking_tokens = Option(int, None, minimum=1, help="stop thinking here [budget-forcing:MIN:MAX, else no cap]")
        think_end = Option(str, "</think>", help="the end-of-thinking delimiter")
        wait_phrase = Option(str, "Wait", help="appended to keep the model thinking")
        answer_phrase = Option(str, "\n</think>\n\nThe answer is", help="appended to make it answer")
        max_waits = Option(int, 4, minimum=0, help="'Wait's per path")

    options: Options

    def __init__(self, config, arg=None, **kwargs):
        super().__init__(config, arg, **kwargs)
        low, _, high = (arg or "").partition(":")
        try:
            default_min = int(low) if low else 128
            default_max = int(high) if high else None
        except ValueError:
            raise UsageError(
                f"budget-forcing takes MIN[:MAX] thinking tokens, e.g. budget-forcing:256:1024 (got {arg!r})"
            ) from None
        low_option, high_option = self.options.min_thinking_tokens, self.options.max_thinking_tokens
        self.min_tokens = default_min if low_option is None else low_option
        self.max_tokens = default_max if high_option is None else high_option
        if self.max_tokens is not None and self.max_tokens < self.min_tokens:
            raise UsageError(
                f"budget-forcing: max_thinking_tokens ({self.max_tokens}) is below min_thinking_tokens ({self.min_tokens})"
            )
        self.think_end = self.options.think_end
        self.wait = self.options.wait_phrase
        self.answer = self.options.answer_phrase
        self.max_waits = self.options.max_waits
        self.suppress = self.think_end
        """The context drops this from the end of the step a reflection follows."""

    def adjust_params(self, params: SamplingParams) -> SamplingParams:
        stop = params.stop if self.think_end in params.stop else (*params.stop, self.think_end)
        max_tokens = params.max_tokens if self.max_tokens is None else min(params.max_tokens, self.max_tokens)
        return attrs.evolve(params, stop=stop, max_tokens=max_tokens)

    def thinking(self, steps: Sequence[Step]) -> int:
        return sum(len(step.token_ids) for step in steps)

    def decide(self, steps: Sequence[Step], ended: bool) -> str | None:
        if not steps or steps[-1].injected or not self.room(steps):
            return None
        last = steps[-1]
        before = "".join(step.text for step in steps[:-1])
        if self.think_end in before:  # thinking is over
            return None
        stripped = last.text[: -len(self.think_end)] if last.text.endswith(self.think_end) else None
        if stripped is None and self.think_end in last.text:
            return None
        if stripped is not None or (ended and last.finish_reason == "eos"):
            # The model tried to end its thinking (or, without <think>, its text).
            if self.thinking(steps) < self.min_tokens and self.count(steps) < self.max_waits:
                text = before + (stripped if stripped is not None else last.text)
                # s1 appends "Wait" right where the model stopped; a finished text
                # (no <think>) gets a blank line first.
                separator = "" if not text or text[-1].isspace() else "\n\n"
                return self.text(text, self.wait, after="", separator=separator)
            return None
        if self.max_tokens is not None and self.thinking(steps) >= self.max_tokens:
            return self.text("", self.answer, after="")
        return None

    def on_step(self, task: Task, steps: Sequence[Step], score: Score | None, reflections: int) -> str | None:
        return self.decide(steps, ended=False)

    def on_finish(self, task: Task, steps: Sequence[Step], score: Score | None, reflections: int) -> str | None:
        return self.decide(steps, ended=True)


@hookimpl
def reason_register_reflections(register):
    register("marco", MarcoReflection)
    register("low-confidence", LowConfidenceReflection)
    register("on-verifier-fail", VerifierFailReflection)
    register("budget-forcing", BudgetForcing)
