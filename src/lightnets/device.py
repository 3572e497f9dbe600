"""The machine a run lives on: its device, the CPU's precision features, and the autocast that follows from them.

What the machine offers decides the precision: bf16 autocast is only faster on a CPU that computes in bf16
natively (AVX512-BF16 or AMX); elsewhere PyTorch emulates it and it runs slower than float32. INT8 gains need
VNNI or AMX in the same way. :func:`cpu_features` reads them, :func:`default_amp` decides.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "autocast_context",
    "cpu_features",
    "cpu_fp32_peak",
    "cpu_has_native_bf16",
    "default_amp",
    "describe_cpu_features",
    "device_name",
    "quiet_cuda_home_notice",
    "resolve_device",
]

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


def device_name(device: str | torch.device = "cpu") -> str:
    """What a figure was measured on: the GPU's name, or the CPU model as the OS reports it."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_ghz() -> tuple[float, str] | None:
    """The clock: the kernel's maximum frequency, else the model name's "@ 2.45GHz", else /proc/cpuinfo's MHz."""
    try:
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        return khz / 1e6, "cpuinfo_max_freq"
    except (OSError, ValueError):
        pass
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    named = re.search(r"model name\s*:.*@\s*([0-9.]+)\s*GHz", text)
    if named:
        return float(named.group(1)), "the model name"
    mhz = [float(value) for value in re.findall(r"cpu MHz\s*:\s*([0-9.]+)", text)]
    return (max(mhz) / 1e3, "/proc/cpuinfo's cpu MHz") if mhz else None


def cpu_fp32_peak() -> tuple[float, str] | None:
    """The CPU's fp32 multiply-accumulate peak in GMAC/s and the formula it came from, or None when the clock
    cannot be read. Assumes two FMA units per core: 16 fp32 FMAs a cycle with AVX2 (8 lanes x 2), 32 with AVX-512
    (16 x 2, as on Xeon Scalable; one-unit parts and AMD Zen 4, which splits AVX-512 into 256-bit halves, reach
    half of that)."""
    clock = _cpu_ghz()
    if clock is None:
        return None
    ghz, source = clock
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    features = cpu_features()
    lanes, isa = (16, "AVX-512") if "AVX-512" in features else (8, "AVX2") if "AVX2" in features else (4, "SSE")
    per_cycle = 2 * lanes
    peak = cores * per_cycle * ghz
    formula = (
        f"{cores} cores x {per_cycle} fp32 FMA per cycle ({isa}: {lanes} lanes x 2 FMA units) x {ghz:.2f} GHz "
        f"(from {source}) = {peak:.0f} GMAC/s"
    )
    return peak, formula


# ---------------------------------------------------------------------------------------------- device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for but CUDA is not available here; use --device cpu")
    return device


def default_amp(device: torch.device) -> bool:
    """bf16 autocast where it is faster: on CUDA, and on CPUs with native bf16. On AVX512-BF16,
    benchmarks/cpu_bf16_training.py measured training x1.15-1.72 faster in bf16 for ShuffleNet v1, SPGNet, ParNet and
    AsymmNet-Large, and slower only for AsymmNet-Small (x0.75-0.85); a CPU without native bf16 emulates it."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def autocast_context(device: torch.device, enabled: bool, dtype: torch.dtype) -> Any:
    return torch.autocast(device.type, dtype=dtype) if enabled else nullcontext()


class _NoCudaHomeNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


def quiet_cuda_home_notice() -> None:
    """Drop the line torch logs when a CPU-only machine imports its C++ extension helper ("No CUDA runtime is
    found, using CUDA_HOME=..."): on a machine without CUDA it says nothing the user can act on. Other records of
    that logger pass. Takes effect for imports after the call (importing lightnets makes it)."""
    logger = logging.getLogger("torch.utils.cpp_extension")  # the logger torch creates, configured before import
    if not any(isinstance(existing, _NoCudaHomeNotice) for existing in logger.filters):
        logger.addFilter(_NoCudaHomeNotice())
