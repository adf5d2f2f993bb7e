#!/usr/bin/env bash
# Install the OpenAI-compatible server the integration tests talk to: llama.cpp's
# server from `llama-cpp-python[server]`, into the given Python environment.
#
#   bash scripts/install-server.sh .venv/bin/python
#
# Idempotent: does nothing when `import llama_cpp.server` works AND the stamp in the
# environment says it was built by this script with today's flags. Otherwise it installs
# the portable wheel from this machine's wheel cache, or builds it from source first
# (~5 minutes on 2 cores, once), and checks that it answers one completion before
# writing the stamp.
set -euo pipefail

PY=${1:-.venv/bin/python}
SPEC=${LLAMA_CPP_SPEC:-'llama-cpp-python[server]>=0.3.7'}

# A portable CPU-only build. GGML_NATIVE (-march=native) is off on purpose: on machines
# whose CPU reports AMX but whose kernel does not grant AMX tile state, a native build
# compiles AMX kernels and dies with SIGILL on its first completion. AVX2/FMA/F16C is
# what every x86-64 machine of the last decade has; AVX-512 and AMX stay off.
# Also: no GPU backend, no BLAS, no curl (models come from the local wheel), no
# llama.cpp tests/examples/server binaries (the Python package ships its own server),
# and no multimodal library (LLAVA_BUILD=OFF skips libmtmd/clip, a large share of the
# compile; llama_cpp loads it only for image chat handlers). CMAKE_ARGS from the
# environment come last, so they can override any of these.
FLAGS="-DLLAVA_BUILD=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_HIP=OFF -DGGML_BLAS=OFF"
FLAGS+=" -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF"
FLAGS+=" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
FLAGS+=" -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF"
export CMAKE_ARGS="$FLAGS ${CMAKE_ARGS:-}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"

# The stamp records what was built. "import works" alone is not enough: an earlier
# install (an older version of this script, or a plain `pip install`) may have built
# llama.cpp with -march=native, and that build imports fine and crashes later.
PREFIX=$("$PY" -c "import sys; print(sys.prefix)")
STAMP="$PREFIX/.llama-cpp-build"
WANT="spec=$SPEC
cmake_args=$CMAKE_ARGS"

if "$PY" -c "import llama_cpp.server" >/dev/null 2>&1 && [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    echo "install-server: llama-cpp-python server already installed (built with this script's flags)"
    exit 0
fi

start=$(date +%s)
rm -f "$STAMP"
# pip caches built wheels by name and version only, not by CMAKE_ARGS: it would happily
# reinstall a wheel built earlier with other (native) flags. So the wheel is built with
# --no-cache-dir into a cache of our own, keyed by the spec and the flags: the compile
# happens once per machine (and flags), and every fresh venv (CI's clean clones)
# installs the same portable wheel in seconds.
KEY=$(printf '%s' "$WANT" | sha256sum | cut -c1-16)
WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/reason-runtime/llama-cpp-wheels/$KEY"
wheel=$(ls "$WHEELS"/llama_cpp_python-*.whl 2>/dev/null | head -n 1 || true)
if [[ -z "$wheel" ]]; then
    echo "install-server: building $SPEC (compiles llama.cpp once per machine; several minutes on 2 cores)"
    tmp=$(mktemp -d "${WHEELS}.XXXXXX" 2>/dev/null || { mkdir -p "$(dirname "$WHEELS")"; mktemp -d "${WHEELS}.XXXXXX"; })
    "$PY" -m pip wheel -q --no-cache-dir --no-deps -w "$tmp" "${SPEC/\[server\]/}"
    rm -rf "$WHEELS" && mv "$tmp" "$WHEELS"  # whole or not at all
    wheel=$(ls "$WHEELS"/llama_cpp_python-*.whl | head -n 1)
else
    echo "install-server: installing the portable wheel built earlier ($wheel)"
fi
# pip leaves an installed llama-cpp-python alone, so remove it first.
"$PY" -m pip uninstall -q -y llama-cpp-python >/dev/null 2>&1 || true
"$PY" -m pip install -q "${wheel}[server]"
"$PY" -c "import llama_cpp.server" || {
    echo "install-server: llama_cpp.server still does not import after the install" >&2
    exit 1
}

# One real completion: an illegal instruction shows up only when a kernel runs, not at
# import. Needs the embedded model (installed by `make install`); skipped without it.
set +e
"$PY" - <<'EOF'
import sys
try:
    from reason.plugins.backends.models import resolve_model
    path = resolve_model("smollm2").path
except Exception as exc:  # no reason package or no embedded model: nothing to load
    print(f"install-server: no embedded model to smoke-test with ({exc}); skipped")
    sys.exit(0)
from llama_cpp import Llama
llm = Llama(model_path=path, n_ctx=256, n_threads=2, verbose=False)
out = llm("1, 2, 3,", max_tokens=4, temperature=0.0)
assert out["choices"][0]["text"] is not None
print("install-server: the build answers a completion")
EOF
code=$?
set -e
if [[ $code -ne 0 ]]; then
    echo "install-server: the built llama.cpp failed its first completion (exit $code; 132 = SIGILL:" \
         "an instruction this CPU or kernel does not allow). Check CMAKE_ARGS." >&2
    exit 1
fi

printf '%s' "$WANT" > "$STAMP"
echo "install-server: done in $(( $(date +%s) - start ))s"
