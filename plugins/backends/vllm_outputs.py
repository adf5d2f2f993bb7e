"""The ``vllm`` backend's mapping between our types and vLLM's (pure functions,
unit-tested without vllm): prompts and sampling params in, ``RequestOutput``s back as
completions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reason.errors import BackendError
from reason.types import Completion, FinishReason, GenerateRequest, SamplingParams, sample_seed


def engine_prompt(engine: Any, ids: Sequence[int]) -> Any:
    """Token ids as ``engine.generate`` takes them: rendered by the engine's own renderer
    where it has one (vLLM 0.3x deprecates raw prompts and will stop taking them), the
    plain ``{"prompt_token_ids": ...}`` dict for older vLLM, which has no renderer."""
    prompt = {"prompt_token_ids": list(ids)}
    render = getattr(getattr(engine, "renderer", None), "render_cmpl", None)
    if render is None:
        return prompt
    (rendered,) = render([prompt])
    return rendered


def sampling_kwargs(params: SamplingParams, n: int) -> dict[str, Any]:
    """Our sampling params as ``vllm.SamplingParams`` keyword arguments.

    The stop string stays in the text (``include_stop_str_in_output``), as our contract
    wants; ``logprobs=k`` also returns the sampled token's own logprob (k may be 0).
    """
    kwargs: dict[str, Any] = dict(
        n=n,
        temperature=params.temperature,
        top_p=params.top_p,
        max_tokens=params.max_tokens,
        stop=list(params.stop) or None,
        include_stop_str_in_output=True,
        logprobs=params.logprobs,
    )
    if params.seed is not None:
        kwargs["seed"] = params.seed
    return kwargs


def sample_kwargs(params: SamplingParams, index: int) -> dict[str, Any]:
    """``vllm.SamplingParams`` keyword arguments of sample ``index`` (one vLLM request
    per sample, with its own derived seed)."""
    kwargs = sampling_kwargs(params, 1)
    if params.seed is not None:
        kwargs["seed"] = sample_seed(params.seed, index)
    return kwargs


def finish_reason(reason: str | None, stop_reason: int | str | None) -> FinishReason:
    """vLLM's ``finish_reason``/``stop_reason`` as ours: a matched stop *string* is
    ``stop``; ``stop`` with no stop reason (EOS) or a stop *token id* is ``eos``."""
    if reason == "length":
        return "length"
    if reason == "stop" and isinstance(stop_reason, str):
        return "stop"
    return "eos"


def logprobs_from_positions(
    token_ids: Sequence[int], positions: Sequence[Mapping[int, Any]] | None, k: int
) -> tuple[list[float], list[list[float]]]:
    """Per generated token: the sampled token's logprob, and the top-``k`` logprobs,
    highest first. Each position maps token id -> ``Logprob`` (``.logprob``): vLLM puts
    the top-k there plus the sampled token when it is not among them."""
    chosen: list[float] = []
    top: list[list[float]] = []
    if positions is None:
        return [0.0] * len(token_ids), [[] for _ in token_ids]
    for token_id, position in zip(token_ids, positions):
        if not position:
            chosen.append(0.0)
            top.append([])
            continue
        values = {tid: float(getattr(lp, "logprob", lp)) for tid, lp in position.items()}
        chosen.append(values.get(token_id, min(values.values())))
        top.append(sorted(values.values(), reverse=True)[:k] if k > 0 else [])
    return chosen, top


def completion_from(
    out: Any, prompt_tokens: int, k: int, cached_tokens: int = 0, finish: FinishReason | None = None
) -> Completion:
    """One ``vllm.CompletionOutput`` as our :class:`Completion` (``finish`` overrides its
    finish reason: a sample still running has none)."""
    token_ids = list(out.token_ids)
    chosen, top = logprobs_from_positions(token_ids, out.logprobs, k)
    return Completion(
        text=out.text,
        token_ids=token_ids,
        logprobs=chosen,
        top_logprobs=top,
        finish_reason=finish or finish_reason(out.finish_reason, getattr(out, "stop_reason", None)),
        prompt_tokens=prompt_tokens,
        cached_tokens=cached_tokens,
    )


def completions_from_output(output: Any, request: GenerateRequest) -> list[Completion]:
    """Map one ``vllm.RequestOutput`` holding all ``request.n`` samples to our completions."""
    prompt_tokens = len(getattr(output, "prompt_token_ids", None) or ())
    cached = int(getattr(output, "num_cached_tokens", None) or 0)
    outs = sorted(output.outputs, key=lambda o: getattr(o, "index", 0))
    # vLLM's count is the request's: samples after its first (vLLM's own n) share its pass
    completions = [
        completion_from(out, prompt_tokens, request.params.logprobs, cached if i == 0 else prompt_tokens)
        for i, out in enumerate(outs)
    ]
    if len(completions) != request.n:
        raise BackendError(f"backend vllm: asked for {request.n} completions, vLLM returned {len(completions)}")
    return completions


def completions_from_outputs(outputs: Sequence[Any], request: GenerateRequest) -> list[Completion]:
    """Map one ``vllm.RequestOutput`` per sample (in sample order) to our completions."""
    completions = []
    for output in outputs:
        completions.extend(completions_from_output(output, GenerateRequest(request.prompt, request.params, len(output.outputs))))
    if len(completions) != request.n:
        raise BackendError(f"backend vllm: asked for {request.n} completions, vLLM returned {len(completions)}")
    return completions
