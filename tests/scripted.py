"""A scripted backend for unit tests of algorithm logic: no model, fully deterministic.

The script maps (request, sample index) to the text the "model" would write in full;
the backend then applies the request's stop strings and token limit exactly like a real
backend, one token per whitespace-separated word. Every call is recorded so tests can
count batched calls.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence

from reason import Backend, Completion, Config, GenerateRequest

Script = Callable[[GenerateRequest, int], str]

_TOKEN = re.compile(r"\S+\s*|\s+")


def _logprob(text: str, i: int) -> float:
    digest = hashlib.sha256(f"{text}|{i}".encode()).digest()
    return -((digest[0] / 255.0) * 2.0 + 0.01)


class ScriptedBackend(Backend):

    def __init__(self, script: Script | None = None, config: Config | None = None, logprob: Callable[[str, int], float] | None = None,
                 watches: bool = False):
        super().__init__(config or Config(), None)
        self.script = script or (lambda request, i: "Step one.\n\nThe answer is \\boxed{4}.")
        self.logprob = logprob or _logprob
        self.watches = watches
        self.calls: list[list[GenerateRequest]] = []

    def format_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        return "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
        self.calls.append(list(requests))
        return [[self._one(request, i) for i in range(request.n)] for request in requests]

    def _one(self, request: GenerateRequest, index: int) -> Completion:
        full = self.script(request, index)
        tokens = _TOKEN.findall(full)
        out: list[str] = []
        finish = "eos"
        for token in tokens:
            if len(out) >= request.params.max_tokens:
                finish = "length"
                break
            out.append(token)
            text = "".join(out)
            hit = [s for s in request.params.stop if s in text]
            if hit:
                cut = min(text.index(s) + len(s) for s in hit)
                # keep the stop string, drop what follows it in this token
                out[-1] = out[-1][: len(out[-1]) - (len(text) - cut)]
                finish = "stop"
                break
            watch = request.watch if self.watches else None
            if watch is not None and len(out) % watch.every == 0 and len(out) < len(tokens):
                if watch.stop(self._completion(request, out, "length")):
                    finish = "length"
                    break
        return self._completion(request, out, finish)

    def _completion(self, request: GenerateRequest, out: list[str], finish: str) -> Completion:
        text = "".join(out)
        logprobs = [self.logprob(text, i) for i in range(len(out))]
        k = request.params.logprobs
        # fixed competitors, so a higher chosen logprob means a higher confidence
        top = [sorted([lp, *(-1.0 - j for j in range(k - 1))], reverse=True) if k else [] for lp in logprobs]
        return Completion(
            text=text,
            token_ids=[abs(hash(t)) % 50000 for t in out],
            logprobs=logprobs,
            top_logprobs=top,
            finish_reason=finish,
            prompt_tokens=len(_TOKEN.findall(request.prompt)),
        )


def steps_script(steps: Sequence[str]) -> Script:
    """A script that writes ``steps`` in order, continuing from however many the prompt
    already holds (so step-wise searches walk through them)."""

    def script(request: GenerateRequest, index: int) -> str:
        done = sum(1 for s in steps if s in request.prompt)
        return "".join(steps[done:])

    return script




class ContinuousScriptedBackend(ScriptedBackend):
    """The scripted backend as a continuous engine: each request is served on its own as
    soon as it arrives and takes ``delay(request)`` seconds (default: 10 ms per token of
    its ``max_tokens``), however many others are in flight. Records when each request
    started and ended, and how many were in flight at most."""

    continuous = True

    def __init__(self, script: Script | None = None, delay: Callable[[GenerateRequest], float] | None = None, **kwargs):
        super().__init__(script, **kwargs)
        self.delay = delay or (lambda request: 0.01 * request.params.max_tokens)
        self.log: list[tuple[str, float, float]] = []  # (prompt, start, end)
        self.in_flight = 0
        self.most_in_flight = 0
        self.cancelled = 0

    async def generate_async(
        self, request: GenerateRequest, *, on_text: Callable[[int, str], None] | None = None
    ) -> list[Completion]:
        import asyncio
        import time

        start = time.perf_counter()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay(request))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        self.log.append((request.prompt, start, time.perf_counter()))
        return [self._one(request, i) for i in range(request.n)]
