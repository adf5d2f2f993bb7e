import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

# The suite runs on the small SmolLM2-135M (four times faster than the default
# Qwen2.5-Coder-0.5B, which tests/test_default_model.py covers); subprocesses inherit it.
os.environ["REASON_MODEL"] = "smollm2"

from scripted import ScriptedBackend  # noqa: E402

from reason import Config, Runtime  # noqa: E402


@pytest.fixture
def scripted():
    """A fresh scripted backend (see tests/scripted.py)."""
    return ScriptedBackend()


@pytest.fixture
def make_runtime():
    """Build a Runtime on a scripted backend: make_runtime(backend, **config)."""
    runtimes = []

    def make(backend=None, **config):
        rt = Runtime(Config(**config), backend=backend or ScriptedBackend())
        runtimes.append(rt)
        return rt

    yield make
    for rt in runtimes:
        rt.close()
