"""What the machine offers: CPU instruction-set features that decide which precisions run fast.

bf16 autocast is only faster on a CPU that computes in bf16 natively (AVX512-BF16 or AMX); elsewhere PyTorch
emulates it and it runs slower than float32. INT8 gains need VNNI or AMX in the same way.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

__all__ = ["cpu_features", "cpu_has_native_bf16", "describe_cpu_features"]

# /proc/cpuinfo flag -> the name people use for it. Order is the order of the printed list.
_FLAGS = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "VNNI",
    "avx_vnni": "VNNI",
    "avx512_bf16": "BF16",
    "amx_bf16": "AMX",
}


@functools.cache
def cpu_features() -> tuple[str, ...]:
    """The CPU's precision-relevant features, e.g. ``("AVX2", "AVX-512", "VNNI", "BF16")``.

    Read from /proc/cpuinfo on Linux; elsewhere from the SIMD level PyTorch dispatches to, which tells AVX2 and
    AVX-512 apart but not VNNI, BF16 or AMX.
    """
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    if flags:
        names = [name for flag, name in _FLAGS.items() if flag in flags]
        return tuple(dict.fromkeys(names))  # VNNI may come from two flags
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if capability.startswith("AVX512"):
        return ("AVX2", "AVX-512")
    return ("AVX2",) if capability.startswith("AVX2") else ()


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    return bool({"BF16", "AMX"} & set(cpu_features()))


def describe_cpu_features() -> str:
    """One line for a benchmark's header: the CPU features, or what could not be told."""
    features = cpu_features()
    machine = platform.machine()
    if not features:
        return f"{machine}: none of AVX2, AVX-512, VNNI, BF16, AMX found"
    missing = [name for name in ("AVX-512", "VNNI", "BF16", "AMX") if name not in features]
    return f"{machine}: {' '.join(features)}" + (f" (no {', '.join(missing)})" if missing else "")
