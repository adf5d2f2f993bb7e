"""The ``vllm`` backend: vLLM's offline engine in this process, on GPU.

One scheduler tick is one ``LLM.generate(prompts, [SamplingParams, ...])`` call: vLLM
batches every pending request of every running search itself, and its automatic prefix
caching shares the KV cache of the prefixes that repeat all over a search tree.

Settings (``config`` fields and ``options``, i.e. ``-o key=value``):

- ``config.model`` (or ``--backend vllm:MODEL``): HF directory, hub id or ``.gguf`` file
  (converted once to a dense HF directory); default the embedded SmolLM2.
- ``config.dtype`` (``auto``), ``config.seed``.
- options ``tensor_parallel_size`` (1), ``gpu_memory_utilization`` (0.9),
  ``max_model_len`` (the model's), ``enforce_eager`` (false), ``tokenizer`` (the model's).

vLLM is an optional dependency (``pip install 'reason-runtime[vllm]'``) and needs a CUDA
GPU; both are checked up front with an error that says so.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from reason.components import Backend
from reason.errors import BackendError, UsageError
from reason.log import get_logger
from reason.types import Completion, FinishReason, GenerateRequest, SamplingParams

from .models import prompt_ids

log = get_logger()

INSTALL_HINT = "pip install 'reason-runtime[vllm]'"


def vllm_installed() -> bool:
    """Whether vllm can be imported (checked without importing it: that takes seconds)."""
    return importlib.util.find_spec("vllm") is not None


class VLLMBackend(Backend):
    """Policy backend on ``vllm.LLM`` with prefix caching, one ``generate`` per tick."""

    def __init__(self, config: Any, arg: str | None = None) -> None:
        super().__init__(config, arg)
        if not vllm_installed():
            raise UsageError(
                f"backend vllm: the vllm package is not installed; install it with {INSTALL_HINT} "
                "(needs a CUDA GPU), or use --backend openai to reach a vLLM server, or --backend transformers"
            )
        self.tensor_parallel_size = config.option("tensor_parallel_size", 1, int, minimum=1)
        self.gpu_memory_utilization = config.option("gpu_memory_utilization", 0.9, float)
        self.max_model_len = config.option("max_model_len", None, int, minimum=1)
        self.enforce_eager = config.option("enforce_eager", False, bool)
        self.tokenizer_spec = config.option("tokenizer")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise UsageError("backend vllm: option gpu_memory_utilization must be in (0, 1]")
        self._llm: Any = None
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return str(self.arg or self.config.model or "SmolLM2-135M-Instruct (embedded)")

    # -- engine -------------------------------------------------------------------

    def _model_path(self) -> str:
        """What ``vllm.LLM`` loads: an HF directory or hub id. A GGUF file (the embedded
        default included) goes through the shared dense cache, which vLLM reads natively."""
        from reason.plugins.backends.models import ensure_converted, resolve_model

        source = resolve_model(self.arg or self.config.model)
        if source.kind == "gguf":
            folder, _ = ensure_converted(source)
            return str(folder)
        return source.path

    @property
    def llm(self) -> Any:
        """The ``vllm.LLM``, built on first use (loading takes a while and the GPU)."""
        with self._lock:
            if self._llm is None:
                self._llm = self._build()
            return self._llm

    def _build(self) -> Any:
        try:
            import torch
        except ImportError:  # vllm always brings torch; this is a broken install
            raise BackendError(f"backend vllm: torch does not import; reinstall with {INSTALL_HINT}") from None
        if not torch.cuda.is_available():
            raise BackendError(
                "backend vllm needs a CUDA GPU and none is visible (torch.cuda.is_available() is False); "
                "run it on a GPU machine, point --backend openai --base-url at a vLLM server, "
                "or use --backend transformers on CPU"
            )
        if self.tensor_parallel_size > torch.cuda.device_count():
            raise UsageError(
                f"backend vllm: tensor_parallel_size={self.tensor_parallel_size} but only "
                f"{torch.cuda.device_count()} GPU(s) are visible; lower -o tensor_parallel_size"
            )
        import vllm

        kwargs: dict[str, Any] = dict(
            model=self._model_path(),
            enable_prefix_caching=True,
            tensor_parallel_size=self.tensor_parallel_size,
            dtype=self.config.dtype or "auto",
            gpu_memory_utilization=self.gpu_memory_utilization,
            enforce_eager=self.enforce_eager,
            # vLLM caps top-k logprobs per request at max_logprobs (default 20).
            max_logprobs=max(20, int(self.config.logprobs)),
        )
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        if self.config.seed is not None:
            kwargs["seed"] = int(self.config.seed)
        if self.tokenizer_spec:
            kwargs["tokenizer"] = str(self.tokenizer_spec)
        log.info("loading vllm engine", **{k: v for k, v in kwargs.items() if k != "model"}, model=kwargs["model"])
        try:
            return vllm.LLM(**kwargs)
        except Exception as exc:
            raise BackendError(f"backend vllm: could not load {kwargs['model']!r}: {type(exc).__name__}: {exc}") from exc

    # -- Backend ------------------------------------------------------------------

    def load(self) -> None:
        self.llm

    def format_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        tokenizer = self.llm.get_tokenizer()
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
        if not requests:
            return []
        import vllm

        llm = self.llm
        params = [vllm.SamplingParams(**sampling_kwargs(r.params, r.n)) for r in requests]
        # Token ids, not text: vLLM adds special tokens to a string prompt, and a chat
        # template that writes BOS itself would then start with two.
        tokenizer = llm.get_tokenizer()
        prompts = [{"prompt_token_ids": prompt_ids(tokenizer, r.prompt)} for r in requests]
        try:
            outputs = llm.generate(prompts, params, use_tqdm=False)
        except Exception as exc:
            raise BackendError(f"backend vllm: generate failed: {type(exc).__name__}: {exc}") from exc
        return [completions_from_output(out, req) for out, req in zip(outputs, requests)]

    def close(self) -> None:
        with self._lock:
            self._llm = None


# -- mapping (pure functions, unit-tested without vllm) --------------------------------


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


def completions_from_output(output: Any, request: GenerateRequest) -> list[Completion]:
    """Map one ``vllm.RequestOutput`` (``prompt_token_ids``, ``outputs`` of
    ``CompletionOutput``) to ``request.n`` of our completions."""
    prompt_tokens = len(getattr(output, "prompt_token_ids", None) or ())
    k = request.params.logprobs
    completions = []
    for out in sorted(output.outputs, key=lambda o: getattr(o, "index", 0)):
        token_ids = list(out.token_ids)
        chosen, top = logprobs_from_positions(token_ids, out.logprobs, k)
        completions.append(
            Completion(
                text=out.text,
                token_ids=token_ids,
                logprobs=chosen,
                top_logprobs=top,
                finish_reason=finish_reason(out.finish_reason, getattr(out, "stop_reason", None)),
                prompt_tokens=prompt_tokens,
            )
        )
    if len(completions) != request.n:
        raise BackendError(f"backend vllm: asked for {request.n} completions, vLLM returned {len(completions)}")
    return completions
