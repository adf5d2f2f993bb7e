#!/usr/bin/env bash
# Install the OpenAI-compatible server the integration tests talk to: llama.cpp's
# server from `llama-cpp-python[server]`, into the given Python environment.
#
#   bash scripts/install-server.sh .venv/bin/python
#
# Idempotent: does nothing when `import llama_cpp.server` already works. The first
# install compiles llama.cpp (~6 minutes on 2 cores); pip caches the built wheel, so a
# later install into a fresh venv on the same machine takes seconds.
set -euo pipefail

PY=${1:-.venv/bin/python}
SPEC=${LLAMA_CPP_SPEC:-'llama-cpp-python[server]>=0.3.7'}

if "$PY" -c "import llama_cpp.server" >/dev/null 2>&1; then
    echo "install-server: llama-cpp-python server already installed"
    exit 0
fi

# A CPU-only build: no GPU backend, no BLAS, no curl (models come from the local wheel),
# no llama.cpp tests/examples/server binaries (the Python package ships its own server),
# and no multimodal library (LLAVA_BUILD=OFF skips libmtmd/clip, a large share of the
# compile; llama_cpp loads it only for image chat handlers). GGML_NATIVE tunes for this
# CPU: the wheel is built here, for here. Set CMAKE_ARGS to add flags of your own.
export CMAKE_ARGS="${CMAKE_ARGS:-} -DLLAVA_BUILD=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_HIP=OFF -DGGML_BLAS=OFF -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"

echo "install-server: building $SPEC (compiles llama.cpp once; several minutes on 2 cores)"
start=$(date +%s)
"$PY" -m pip install -q "$SPEC"
"$PY" -c "import llama_cpp.server" || {
    echo "install-server: llama_cpp.server still does not import after the install" >&2
    exit 1
}
echo "install-server: done in $(( $(date +%s) - start ))s"
