"""Input formats of process reward models: how a question and its steps become tokens,
and which token positions hold each step's score.

A PRM is trained on one exact layout, and a score read anywhere else means nothing. Each
adapter here reproduces one model card's layout and returns, with the token ids, one
*read position* per step: the index whose model output is that step's score.

- ``generic``: any causal LM. ``question\\n`` then each step followed by a separator;
  P(good) over the good/bad next-token logits at each separator's last visible character.
- ``math-shepherd`` (peiyi9979/math-shepherd-mistral-7b-prm): ``question step1 ки\\nstep2 ки``;
  P(" +") over " +"/" -" at each "ки" tag.
- ``rlhflow`` (RLHFlow/Llama3.1-8B-PRM-Deepseek-Data): a chat where each step is a user
  turn (the first one holds the question, a space, and step 1) answered by an assistant
  "+" turn; P("+") over "+"/"-" at the position that predicts each assistant "+".
- ``qwen`` (Qwen/Qwen2.5-Math-PRM-7B/72B): system prompt, user question, one assistant
  turn with ``<extra_0>`` after every step; a two-class reward head, P(class 1) at each
  ``<extra_0>``.

Positions are found from character offsets (fast tokenizers), so they are right for any
tokenizer, whether the tag is one token or several. The text up to a step's read position
never depends on the steps after it, so a step's score is a function of the question and
the steps up to it: that is what makes prefix caching in :mod:`.prm` exact.

No torch here: adapters only build token ids, so they are cheap to unit-test.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from attrs import field, frozen

import reason
from reason.errors import UsageError, VerifierError
from reason.options import Option
from reason.types import int_tuple

QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
"""The system prompt of the Qwen2.5-Math-PRM model card."""


@frozen
class PRMInput:
    """One path, ready for the model: token ids and one read position per step."""

    input_ids: tuple[int, ...] = field(converter=int_tuple)
    positions: tuple[int, ...] = field(converter=int_tuple)


def clean_step(text: str) -> str:
    """A step as the PRM sees it: without the surrounding whitespace (the separator or
    the chat turn delimits it)."""
    return text.strip()


def single_token(tokenizer: Any, text: str, option: str) -> int:
    """The id of ``text`` when it is exactly one token (sentencepiece may prefix "▁")."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise UsageError(
            f"verifier prm: {option}={text!r} is {len(ids)} tokens in this tokenizer; "
            f"choose a string that is a single token (-o {option}=...)"
        )
    return int(ids[0])


def token_in_context(tokenizer: Any, context: str, text: str, option: str) -> int:
    """The id of the token that holds ``text`` when it follows ``context`` (e.g. " +" after
    a tag), found by offsets, so spacing conventions of the tokenizer are respected."""
    full = context + text
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    start = len(context) + (len(text) - len(text.lstrip()))
    for token_id, (begin, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        if begin <= start < end:
            if end < len(full) or full[begin:end].strip() != text.strip():
                break
            return int(token_id)
    raise UsageError(f"verifier prm: -o {option}={text!r} is not a single token after {context!r} in this tokenizer")


def read_positions(tokenizer: Any, text: str, marks: Sequence[tuple[int, int]], add_special_tokens: bool) -> PRMInput:
    """Tokenize ``text`` and map each mark ``(char, limit)`` to the index of the last token
    that covers character ``char``. That token must end at or before ``limit``: a token
    reaching past it would make the score depend on text that comes later."""
    encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    positions: list[int] = []
    t = 0
    for char, limit in marks:
        found = -1
        while t < len(ids):
            begin, end = offsets[t]
            if begin > char:
                break
            if begin < end and begin <= char < end:
                found = t
            t += 1
        if found < 0:
            raise VerifierError(f"prm: no token covers character {char} of the PRM input (tokenizer without offsets?)")
        t = found + 1
        if offsets[found][1] > limit:
            raise VerifierError(
                f"prm: the token {text[offsets[found][0] : offsets[found][1]]!r} runs past a step tag, so the score "
                "would depend on the next step; this tokenizer does not fit the chosen prm_format"
            )
        positions.append(found)
    return PRMInput(ids, positions)


def encode_segments(tokenizer: Any, head: str, segments: Sequence[tuple[str, int]]) -> PRMInput:
    """Tokenize ``head`` (with the tokenizer's special tokens, e.g. BOS) and then each
    ``(text, char)`` segment on its own, reading at the last token that covers ``char``.

    Tokenizing whole text is not stable at a step's end: byte-level BPE cuts a trailing
    "\n\n" differently at the end of the text than before more text, so a step's score
    would change once the path grows. Segments end right after a step's separator, so the
    tokens up to a read position never depend on what follows. Each segment is tokenized
    after the character that precedes it (then those tokens are dropped), so tokenizers
    that mark word starts (sentencepiece's "▁") see the same context as in running text.
    """
    ids = list(tokenizer.encode(head, add_special_tokens=True))
    positions = []
    previous = head[-1:]
    for text, char in segments:
        seg_ids, offsets = _segment(tokenizer, text, previous)
        found = -1
        for t, (begin, end) in enumerate(offsets):
            if begin < end and begin <= char < end:
                found = t
        if found < 0:
            raise VerifierError(f"prm: no token covers the step tag in {text!r} (tokenizer without offsets?)")
        positions.append(len(ids) + found)
        ids += seg_ids
        previous = text[-1:] or previous
    return PRMInput(ids, positions)


def _segment(tokenizer: Any, text: str, previous: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and offsets of ``text`` as it tokenizes after ``previous``."""
    if previous:
        anchor = tokenizer.encode(previous, add_special_tokens=False)
        encoded = tokenizer(previous + text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        clean = ids[: len(anchor)] == anchor and all(begin >= len(previous) for begin, _ in offsets[len(anchor) :])
        if clean:
            shift = len(previous)
            return list(ids[len(anchor) :]), [(b - shift, e - shift) for b, e in offsets[len(anchor) :]]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(encoded["input_ids"]), list(encoded["offset_mapping"])


class PRMFormat(ABC):
    """How one family of PRMs reads a path."""

    name: ClassVar[str]
    head: ClassVar[str] = "lm"
    """``lm``: P(good) over the good/bad next-token logits; ``classifier``: a two-class
    token head, P(class 1)."""

    @abstractmethod
    def encode(self, tokenizer: Any, question: str, steps: Sequence[str]) -> PRMInput:
        """Token ids of ``question`` and ``steps`` (cleaned) and one read position per step."""

    def labels(self, tokenizer: Any) -> tuple[int, int]:
        """(good, bad) token ids for an ``lm`` head."""
        raise NotImplementedError

    def identity(self) -> str:
        """Everything that changes the scores besides the model (keys the prefix cache)."""
        return self.name


def _visible_end(text: str) -> int:
    """Index of the last non-whitespace character of ``text``, or its last character when
    it is all whitespace (e.g. a "\\n\\n" separator)."""
    stripped = text.rstrip()
    return len(stripped) - 1 if stripped else len(text) - 1


class GenericFormat(PRMFormat):
    """``{question}\\n{step1}{sep}{step2}{sep}...``, read at each separator's last visible
    character; P(good) over the good and bad next tokens. Works with any causal LM."""

    name = "generic"

    def __init__(self, separator: str = "\n\n", good: str = "+", bad: str = "-", prefix: str = "\n") -> None:
        if not separator:
            raise UsageError("verifier prm: the separator must not be empty (-o prm.separator=...)")
        if not good or not bad or good == bad:
            raise UsageError("verifier prm: prm.good_token and prm.bad_token must be two different, non-empty strings")
        self.separator, self.good, self.bad, self.prefix = separator, good, bad, prefix

    def identity(self) -> str:
        return f"{self.name}|{self.separator!r}|{self.good!r}|{self.bad!r}|{self.prefix!r}"

    def labels(self, tokenizer: Any) -> tuple[int, int]:
        return single_token(tokenizer, self.good, "prm.good_token"), single_token(tokenizer, self.bad, "prm.bad_token")

    def encode(self, tokenizer: Any, question: str, steps: Sequence[str]) -> PRMInput:
        read = _visible_end(self.separator)
        segments = []
        for k, step in enumerate(steps):
            # the question/step delimiter opens the first segment, so a leading space can
            # join the first word as in running text
            text = (self.prefix if k == 0 else "") + clean_step(step)
            segments.append((text + self.separator, len(text) + read))
        return encode_segments(tokenizer, question.strip(), segments)


class MathShepherdFormat(GenericFormat):
    """Math-Shepherd: ``{question} {step1} ки\\n{step2} ки``; P(" +") over " +"/" -" at
    each "ки" (the card's ``tokenizer.encode("+ -")[1:]`` are the space-prefixed tokens)."""

    name = "math-shepherd"
    TAG = "ки"

    def __init__(self) -> None:
        super().__init__(separator=f" {self.TAG}\n", good="+", bad="-", prefix=" ")

    def labels(self, tokenizer: Any) -> tuple[int, int]:
        return (
            token_in_context(tokenizer, self.TAG, " +", "prm_good_token"),
            token_in_context(tokenizer, self.TAG, " -", "prm_bad_token"),
        )

    def encode(self, tokenizer: Any, question: str, steps: Sequence[str]) -> PRMInput:
        # A tag inside a step would be read as a step boundary by the model.
        return super().encode(tokenizer, question, [clean_step(s).replace(self.TAG, "") for s in steps])


class RLHFlowFormat(PRMFormat):
    """RLHFlow PRMs: a chat of user turns (the steps; the first also holds the question)
    each answered by an assistant "+"; P("+") over "+"/"-" where the model predicts each
    assistant "+" (the token before it)."""

    name = "rlhflow"
    GOOD, BAD = "+", "-"

    def labels(self, tokenizer: Any) -> tuple[int, int]:
        # As the card: the last token of encode("+") / encode("-").
        return int(tokenizer.encode(self.GOOD)[-1]), int(tokenizer.encode(self.BAD)[-1])

    def conversation(self, question: str, steps: Sequence[str]) -> list[dict[str, str]]:
        messages = []
        for k, step in enumerate(steps):
            text = f"{question.strip()} {clean_step(step)}" if k == 0 else clean_step(step)
            messages += [{"role": "user", "content": text}, {"role": "assistant", "content": self.GOOD}]
        return messages

    def encode(self, tokenizer: Any, question: str, steps: Sequence[str]) -> PRMInput:
        messages = self.conversation(question, steps)
        full = _render(tokenizer, messages)
        marks = []
        for k in range(1, len(steps) + 1):
            # Rendering turn by turn finds each "+" without knowing the template's markup.
            partial = _render(tokenizer, messages[: 2 * k])
            if not full.startswith(partial):
                raise VerifierError(
                    "prm: this tokenizer's chat template renders a conversation differently when it grows; "
                    "the rlhflow format needs a template whose earlier turns do not change"
                )
            plus = partial.rfind(self.GOOD)
            marks.append((plus, plus + 1))
        encoded = read_positions(tokenizer, full, marks, add_special_tokens=False)
        # The score is the prediction *of* the "+": read one token before it.
        return PRMInput(encoded.input_ids, [p - 1 for p in encoded.positions])


class QwenFormat(PRMFormat):
    """Qwen2.5-Math-PRM: system, user question, one assistant turn with ``<extra_0>``
    after every step; the reward head's P(class 1) at each ``<extra_0>``."""

    name = "qwen"
    head = "classifier"
    TAG = "<extra_0>"

    def __init__(self, system: str = QWEN_SYSTEM) -> None:
        self.system = system

    def identity(self) -> str:
        return f"{self.name}|{self.system!r}"

    def encode(self, tokenizer: Any, question: str, steps: Sequence[str]) -> PRMInput:
        cleaned = [clean_step(s).replace(self.TAG, "") for s in steps]
        content = "".join(f"{s}{self.TAG}" for s in cleaned)
        messages = [
            {"role": "system", "content": self.system},
            {"role": "user", "content": question},
            {"role": "assistant", "content": content},
        ]
        full = _render(tokenizer, messages)
        base = full.rfind(content)
        if base < 0:
            raise VerifierError("prm: the chat template changed the assistant turn; the qwen format cannot find its step tags")
        marks = []
        offset = base
        for step in cleaned:
            offset += len(step) + len(self.TAG)
            marks.append((offset - 1, offset))
        return read_positions(tokenizer, full, marks, add_special_tokens=False)


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError("verifier prm: this format needs a tokenizer with a chat template; use -o prm.format=generic")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)


FORMATS: tuple[str, ...] = ("generic", "rlhflow", "math-shepherd", "qwen")


def guess_format(model_name: str) -> str:
    """The format a model's name suggests (``auto``), else ``generic``."""
    name = model_name.lower()
    if "math-shepherd" in name or "math_shepherd" in name:
        return "math-shepherd"
    if "rlhflow" in name:
        return "rlhflow"
    if "qwen" in name and "prm" in name:
        return "qwen"
    return "generic"


class FormatOptions(reason.Options):
    """The PRM verifier's options about its input format (it declares them with its own)."""

    format = Option(str, "auto", choices=("auto", *FORMATS), help="the PRM's input format [auto: from the model name]")
    separator = Option(str, "\n\n", help="generic format: text after each step (\\n escapes work)")
    good_token = Option(str, "+", help="generic format: the token meaning 'step is right'")
    bad_token = Option(str, "-", help="generic format: the token meaning 'step is wrong'")
    system = Option(str, None, help="qwen format: the system prompt [Qwen2.5-Math-PRM's]")


def make_format(name: str, options: FormatOptions) -> PRMFormat:
    """Build the adapter ``name`` with the verifier's ``options``."""
    if name == "generic":
        return GenericFormat(
            separator=_unescape(options.separator),
            good=_unescape(options.good_token),
            bad=_unescape(options.bad_token),
        )
    if name == "math-shepherd":
        return MathShepherdFormat()
    if name == "rlhflow":
        return RLHFlowFormat()
    if name == "qwen":
        return QwenFormat(system=options.system or QWEN_SYSTEM)
    raise UsageError(f"verifier prm: unknown format {name!r}; choose one of auto, {', '.join(FORMATS)}")


def _unescape(value: Any) -> str:
    """Let ``-o prm.separator='\\n\\n'`` on a command line mean two newlines."""
    text = str(value)
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape") if "\\" in text else text
