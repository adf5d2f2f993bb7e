"""The ``openai`` backend's request and response mapping (pure functions, unit-tested):
the ``/v1/completions`` body (:func:`completion_payload`), a choice back as a
:class:`Completion` (:func:`parse_choice`, :func:`finish_and_stop`), and what an HTTP
error response says (:func:`error_text`, :func:`mentions_extras`, :func:`retry_after`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reason.types import Completion, FinishReason, GenerateRequest, SamplingParams

VLLM_EXTRAS = {"include_stop_str_in_output": True, "return_tokens_as_token_ids": True, "return_token_ids": True}
"""vLLM's own completion parameters: keep the stop string, identify tokens by id. Other
servers ignore unknown fields; one that rejects them gets requests without them."""
LLAMA_CPP_PYTHON_NEUTRAL = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}
"""llama-cpp-python's server samples with top_k=40, min_p=0.05 and repeat_penalty=1.1
unless told otherwise; these make it sample from temperature and top_p alone, like every
other backend. Sent only to that server (it lists its models as owned by "me"): vLLM's
and SGLang's defaults are neutral already."""


def completion_payload(
    model: str,
    request: GenerateRequest,
    n: int,
    seed_offset: int = 0,
    extras: bool = True,
    bos: str | None = None,
) -> dict[str, Any]:
    """The ``/v1/completions`` body for ``n`` samples of ``request``.

    Logprobs are always asked for (at least 1) since the sampled token's logprob is part
    of every completion. A request split into single samples gets ``seed + i`` so that
    seeded samples still differ. ``bos`` is the model's BOS text: a prompt whose chat
    template already wrote it asks vLLM not to add a second one.
    """
    params: SamplingParams = request.params
    payload: dict[str, Any] = {
        "model": model,
        "prompt": request.prompt,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "n": n,
        "logprobs": max(1, params.logprobs),
        "stream": False,
    }
    if params.stop:
        payload["stop"] = list(params.stop)
    if params.seed is not None:
        payload["seed"] = params.seed + seed_offset
    if extras:
        payload.update(VLLM_EXTRAS)
        if bos and request.prompt.startswith(bos):
            payload["add_special_tokens"] = False
    return payload


def parse_choice(choice: dict[str, Any], params: SamplingParams, prompt_tokens: int, vocab: Any) -> Completion:
    """One OpenAI completion choice as our :class:`Completion`.

    ``vocab`` maps token text to ids and counts tokens (``token_id``, ``count_tokens``):
    the backend, or a stand-in in tests.
    """
    text = choice.get("text") or ""
    lp = choice.get("logprobs") or {}
    tokens = [str(t) for t in (lp.get("tokens") or [])]
    chosen = [float(x) if x is not None else 0.0 for x in (lp.get("token_logprobs") or [])]
    k = params.logprobs
    tops = [_top(entry, k) for entry in (lp.get("top_logprobs") or [])]

    reason, stop = finish_and_stop(choice, params.stop, text, tokens)
    if stop is not None and not text.endswith(stop):
        text += stop  # the server dropped the matched stop string; our contract keeps it

    ids = choice.get("token_ids")
    if tokens:
        if not (isinstance(ids, list) and len(ids) == len(tokens)):
            ids = [_id_of(t, vocab) for t in tokens]
        chosen = (chosen + [0.0] * len(tokens))[: len(tokens)]
        tops = (tops + [[] for _ in tokens])[: len(tokens)]
    else:  # no logprobs from this server: count tokens with the tokenizer
        count = len(ids) if isinstance(ids, list) else vocab.count_tokens(text)
        ids = list(ids) if isinstance(ids, list) else [-1] * count
        chosen, tops = [0.0] * count, [[] for _ in range(count)]
    return Completion(
        text=text,
        token_ids=[int(i) for i in ids],
        logprobs=chosen,
        top_logprobs=tops,
        finish_reason=reason,
        prompt_tokens=prompt_tokens,
    )


def finish_and_stop(
    choice: dict[str, Any], stops: Sequence[str], text: str, tokens: Sequence[str]
) -> tuple[FinishReason, str | None]:
    """Our finish reason and the matched stop string (or ``None``) of one choice."""
    reason = choice.get("finish_reason")
    if reason == "length":
        return "length", None
    # Servers that say which stop matched: vLLM (stop_reason), SGLang (matched_stop),
    # llama.cpp's native server (stopping_word / stop_type).
    for key in ("stop_reason", "matched_stop", "stopping_word"):
        if key in choice:
            value = choice[key]
            if isinstance(value, str) and value:
                return "stop", value
            if key != "stopping_word":
                return "eos", None
    if choice.get("stop_type") in ("eos", "limit"):
        return ("length", None) if choice["stop_type"] == "limit" else ("eos", None)
    if not stops:
        return "eos", None
    for stop in sorted(stops, key=len, reverse=True):
        if text.endswith(stop):
            return "stop", stop
    # The server cut the stop string off the text: the tokens it generated cover it.
    covered = "".join(t for t in tokens if not t.startswith("token_id:"))
    if len(covered) > len(text) and covered.startswith(text):
        tail = covered[len(text) :]
        hits = [s for s in stops if tail.startswith(s)]
        if hits:
            return "stop", max(hits, key=len)
    return "eos", None


def _id_of(token: str, vocab: Any) -> int:
    """A logprob token's id: vLLM's ``token_id:N`` form, else looked up by its text."""
    if token.startswith("token_id:"):
        try:
            return int(token[len("token_id:") :])
        except ValueError:
            pass
    return vocab.token_id(token)


def _top(entry: Any, k: int) -> list[float]:
    """Top-k logprobs of one position, highest first (the dict may also hold the
    sampled token when it is not among the top k)."""
    if k <= 0 or not entry:
        return []
    values = entry.values() if isinstance(entry, dict) else [e.get("logprob") for e in entry if isinstance(e, dict)]
    return sorted((float(v) for v in values if v is not None), reverse=True)[:k]


def error_text(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body))
        if isinstance(error, dict):
            return str(error.get("message") or error)[:300]
        return str(error)[:300]
    return str(body)[:300]


def mentions_extras(response: Any) -> bool:
    text = response.text
    return any(key in text for key in (*VLLM_EXTRAS, "add_special_tokens")) or "extra" in text.lower()


def retry_after(response: Any) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
