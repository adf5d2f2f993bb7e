"""Step splitters: what one step of a reasoning path is.

- ``step``: up to and including a blank line ("\\n\\n"), the unit PRMs are trained on.
- ``line``: up to and including a newline.
- ``ministep:N``: exactly N tokens (Marco-o1 uses 32 and 64), whatever the text.
- ``none``: the whole solution is one step.
"""

from __future__ import annotations

import re

import attrs

from reason import Splitter, hookimpl
from reason.errors import UsageError
from reason.types import SamplingParams


class DelimiterSplitter(Splitter):
    """A step ends with ``delimiter`` (kept in the step's text)."""

    delimiter = "\n\n"

    def step_params(self, params: SamplingParams) -> SamplingParams:
        return attrs.evolve(
            params,
            stop=(*params.stop, self.delimiter),
            max_tokens=min(params.max_tokens, self.config.step_tokens),
        )

    def split(self, text: str) -> list[str]:
        # Split after each run of delimiters so the pieces concatenate back to ``text``.
        pieces = re.split(f"(?<={re.escape(self.delimiter)})(?!{re.escape(self.delimiter[0])})", text)
        return [p for p in pieces if p]


class StepSplitter(DelimiterSplitter):
    delimiter = "\n\n"


class LineSplitter(DelimiterSplitter):
    delimiter = "\n"


class MiniStepSplitter(Splitter):
    """Fixed-length steps of N tokens (default 32)."""

    def __init__(self, config, arg=None, **kwargs):
        super().__init__(config, arg, **kwargs)
        try:
            self.tokens = int(arg) if arg else 32
        except ValueError:
            raise UsageError(f"ministep takes a token count, e.g. ministep:32 (got ministep:{arg})") from None
        if self.tokens < 1:
            raise UsageError(f"ministep needs at least 1 token per step (got ministep:{arg})")

    def step_params(self, params: SamplingParams) -> SamplingParams:
        return attrs.evolve(params, max_tokens=min(params.max_tokens, self.tokens))

    def split(self, text: str) -> list[str]:
        # Token boundaries are not known from text alone; scoring a whole solution in
        # mini-steps therefore uses the blank-line structure, which is what a PRM expects.
        return StepSplitter(self.config).split(text) if text else []


class NoSplitter(Splitter):
    """The whole solution is one step."""

    def step_params(self, params: SamplingParams) -> SamplingParams:
        return params

    def split(self, text: str) -> list[str]:
        return [text] if text else []


@hookimpl
def reason_register_splitters(register):
    register("step", StepSplitter)
    register("line", LineSplitter)
    register("ministep", MiniStepSplitter)
    register("none", NoSplitter)
