"""Latency and throughput on the user's own device: eager, compiled and ONNX Runtime, plus the operator study.

Every timing uses ``torch.utils.benchmark.Timer`` with an explicit thread count, after warm-up calls, and
with a CUDA synchronisation inside the timed statement on GPUs; ONNX Runtime gets the same thread count.
Figures are per call of one batch: ``latency_ms_median`` and its inter-quartile range over the timed
blocks, ``images_per_s`` = batch / median, ``gmacs_per_s`` = MACs per image x images/s / 1e9.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import json
import math
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark as torch_benchmark

from lightnets.complexity import count_macs, count_params
from lightnets.models import create_model, reparameterize_model

__all__ = [
    "BenchSettings",
    "bench_models",
    "device_name",
    "interleaved_latencies",
    "make_runner",
    "operator_study",
    "write_rows",
]

ROW_KEYS = [
    "model",
    "backend",
    "batch_size",
    "input_size",
    "deploy",
    "params",
    "macs",
    "latency_ms_median",
    "latency_ms_iqr",
    "images_per_s",
    "gmacs_per_s",
    "peak_memory_mb",
    "compile_s",
]
BACKENDS = ("eager", "compile", "onnxruntime")


@dataclass
class BenchSettings:
    models: list[str] = field(default_factory=lambda: ["spgnet_s2p6"])
    input_size: int | None = None
    batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    device: str = "cpu"
    threads: int = field(default_factory=torch.get_num_threads)
    backends: list[str] = field(default_factory=lambda: ["eager", "onnxruntime"])
    deploy: bool = True
    channels_last: bool = False
    dtype: str = "float32"
    min_run_time: float = 1.0
    warmup: int = 3

    def __post_init__(self) -> None:
        unknown = sorted(set(self.backends) - set(BACKENDS))
        if unknown:
            raise ValueError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"--dtype must be float32, bfloat16 or float16, got {self.dtype}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"--batch-sizes must be positive integers, got {self.batch_sizes}")
        if self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")


class PeakMemory:
    """Memory the first calls at a batch size add: CUDA's allocator peak above what was allocated before, or on
    CPU the growth of resident memory (sampled every 0.5 ms, after freed memory is handed back to the OS).

    Weights are already resident, so this is activations, workspaces and, for ONNX Runtime, its arena.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss_bytes() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def measure(self, fn: Callable[[], Any], calls: int = 3) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            for _ in range(calls):
                fn()
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - base) / 2**20
        if not Path("/proc/self/statm").exists():
            return float("nan")
        _release_freed_memory()
        base = self._rss_bytes()
        peak = [base]

        def sample() -> None:
            while not self._stop.is_set():
                peak[0] = max(peak[0], self._rss_bytes())
                time.sleep(0.0005)

        self._stop.clear()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            for _ in range(calls):
                fn()
        finally:
            self._stop.set()
            sampler.join()
        return max(0, peak[0] - base) / 2**20


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


def _release_freed_memory() -> None:
    """Hand memory that earlier models freed back to the OS, so that resident-memory growth is this call's own."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the growth is then a lower bound
        ctypes.CDLL("libc.so.6").malloc_trim(0)


MIN_BLOCKS = 5  # an IQR needs several blocks, even when one call outlasts min_run_time


def _time(
    fn: Callable[[], Any],
    threads: int,
    min_run_time: float,
    warmup: int,
    label: str,
    clock: Callable[[], float] = time.perf_counter,
):
    for _ in range(warmup):
        fn()
    timer = torch_benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads, label=label, timer=clock)
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    while len(measurement.times) < MIN_BLOCKS:
        measurement = torch_benchmark.Measurement.merge([measurement, timer.timeit(number=1)])[0]
    return measurement


def _row(
    name: str,
    backend: str,
    batch: int,
    size: int,
    settings: BenchSettings,
    params: int,
    macs: int,
    measurement,
    peak_mb: float,
    compile_s: float | None,
) -> dict[str, Any]:
    median = measurement.median
    images_per_s = batch / median
    return {
        "model": name,
        "backend": backend,
        "batch_size": batch,
        "input_size": size,
        "deploy": settings.deploy,
        "params": params,
        "macs": macs,
        "latency_ms_median": 1e3 * median,
        "latency_ms_iqr": 1e3 * measurement.iqr,
        "images_per_s": images_per_s,
        "gmacs_per_s": macs * images_per_s / 1e9,
        "peak_memory_mb": peak_mb,
        "compile_s": compile_s,
        "device": settings.device,
        "threads": settings.threads,
        "dtype": settings.dtype,
        "channels_last": settings.channels_last,
    }


def _synchronised(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    if device.type != "cuda":
        return fn

    def run() -> Any:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


def bench_models(settings: BenchSettings, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One row per model, backend and batch size (see :data:`ROW_KEYS`)."""
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available here; use --device cpu")
    dtype = getattr(torch, settings.dtype)
    torch.set_num_threads(settings.threads)
    rows: list[dict[str, Any]] = []
    for name in settings.models:
        model = create_model(name).eval()
        size = settings.input_size or int(getattr(model, "default_input_size", 224))
        if settings.deploy:
            model = reparameterize_model(model)
        params = count_params(model)
        macs = count_macs(model, size)
        model = model.to(device=device, dtype=dtype)
        memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
        model = model.to(memory_format=memory_format)
        for backend in settings.backends:
            if backend == "onnxruntime" and (device.type != "cpu" or dtype != torch.float32):
                log(f"{name}: onnxruntime rows are measured on CPU in float32 only; skipped")
                continue
            runner, compile_s, cleanup = make_runner(backend, model, size, settings, device)
            try:
                for batch in settings.batch_sizes:
                    inputs = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
                    inputs = inputs.contiguous(memory_format=memory_format)
                    call = _synchronised(runner(inputs), device)
                    with torch.inference_mode():
                        # Memory first: the first calls at a batch size are the ones that grow the allocators.
                        peak = PeakMemory(device).measure(call)
                        measurement = _time(call, settings.threads, settings.min_run_time, settings.warmup, name)
                    row = _row(name, backend, batch, size, settings, params, macs, measurement, peak, compile_s)
                    rows.append(row)
                    log(
                        f"{name:28s} {backend:11s} batch {batch:3d} @ {size}: {row['latency_ms_median']:9.2f} ms "
                        f"(IQR {row['latency_ms_iqr']:.2f}) {row['images_per_s']:9.1f} img/s "
                        f"{row['gmacs_per_s']:7.2f} GMAC/s"
                    )
            finally:
                cleanup()
    return rows


def make_runner(backend: str, model: nn.Module, size: int, settings: BenchSettings, device: torch.device):
    """(inputs -> zero-argument callable, compile seconds, cleanup) for one backend."""
    if backend == "eager":
        return (lambda x: lambda: model(x)), None, lambda: None
    if backend == "compile":
        compiled = torch.compile(model, dynamic=False)
        example = torch.randn(1, 3, size, size, device=device, dtype=next(model.parameters()).dtype)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(example)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        compile_s = time.perf_counter() - start
        return (lambda x: lambda: compiled(x)), compile_s, lambda: None
    import onnxruntime

    from lightnets.export import export_onnx

    workdir = tempfile.TemporaryDirectory(prefix="lightnets-bench-")
    path = Path(workdir.name) / "model.onnx"
    start = time.perf_counter()
    export_onnx(model.float().to(memory_format=torch.contiguous_format), path, size, check=False)
    export_s = time.perf_counter() - start
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def runner(x: torch.Tensor) -> Callable[[], Any]:
        feed = {input_name: x.float().contiguous().cpu().numpy()}
        return lambda: session.run(None, feed)

    return runner, export_s, workdir.cleanup


def interleaved_latencies(
    calls: dict[str, Callable[[], Any]],
    threads: int,
    rounds: int = 3,
    min_run_time: float = 1.0,
    warmup: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Median seconds per call of each entry of ``calls``, once per round, the entries taking turns.

    For head-to-head figures (A against B, same process): a slow drift of a shared machine hits every entry
    alike, so the ratio of the medians over rounds holds even when the absolute figures move. Each entry is
    warmed up once, and the order rotates every round so none always runs first. ``clock`` may be
    ``time.process_time`` for CPU time, which other processes on a busy machine disturb less.
    """
    labels = list(calls)
    medians: dict[str, list[float]] = {label: [] for label in labels}
    with torch.inference_mode():
        for call in calls.values():
            for _ in range(warmup):
                call()
        for index in range(rounds):
            shift = index % len(labels)
            for label in labels[shift:] + labels[:shift]:
                medians[label].append(_time(calls[label], threads, min_run_time, 0, label, clock).median)
    return medians


# --------------------------------------------------------------------------------------------- operator study


def _equal_mac_channels(base: int, groups: int) -> int:
    """Channels C with 9*C*C/g == 9*base*base (same MACs as the dense conv), rounded to a multiple of g."""
    exact = base * math.sqrt(groups)
    return max(groups, round(exact / groups) * groups)


def operator_study(
    *,
    base_channels: int = 64,
    resolution: int = 56,
    batch_size: int = 1,
    device: str = "cpu",
    threads: int | None = None,
    min_run_time: float = 0.5,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """GMAC/s of 3x3 convs at equal MACs (dense, grouped g=2..32, depthwise) and of 1x1 dense vs grouped."""
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    device_ = torch.device(device)
    cases: list[tuple[str, int, int, int]] = [("conv3x3", 3, base_channels, 1)]
    cases += [("conv3x3", 3, _equal_mac_channels(base_channels, g), g) for g in (2, 4, 8, 16, 32)]
    # Depthwise: 9*C*HW MACs equals the dense 9*C0^2*HW when C = C0^2.
    cases.append(("conv3x3", 3, base_channels * base_channels, base_channels * base_channels))
    cases += [("conv1x1", 1, base_channels * 2, 1)]
    cases += [("conv1x1", 1, _equal_mac_channels(base_channels * 2, g), g) for g in (2, 4, 8)]
    rows = []
    for op, kernel, channels, groups in cases:
        conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=groups, bias=False).to(device_).eval()
        x = torch.randn(batch_size, channels, resolution, resolution, device=device_)
        macs = kernel * kernel * channels * (channels // groups) * resolution * resolution
        call = _synchronised(lambda conv=conv, x=x: conv(x), device_)
        with torch.inference_mode():
            measurement = _time(call, threads, min_run_time, 3, op)
        kind = "dense" if groups == 1 else "depthwise" if groups == channels else f"grouped g={groups}"
        row = {
            "op": op,
            "kind": kind,
            "groups": groups,
            "channels": channels,
            "resolution": resolution,
            "batch_size": batch_size,
            "macs": macs,
            "latency_ms_median": 1e3 * measurement.median,
            "latency_ms_iqr": 1e3 * measurement.iqr,
            "gmacs_per_s": batch_size * macs / measurement.median / 1e9,
            "device": device,
            "threads": threads,
        }
        rows.append(row)
        log(
            f"{op} {kind:15s} C={channels:5d} @ {resolution}x{resolution}: {row['macs'] / 1e6:7.1f} MMACs "
            f"{row['latency_ms_median']:8.3f} ms  {row['gmacs_per_s']:7.2f} GMAC/s"
        )
    return rows


# --------------------------------------------------------------------------------------------- output


def write_rows(rows: Sequence[dict[str, Any]], path: str | Path) -> tuple[Path, Path]:
    """Write ``rows`` as a JSON list to ``path`` and as CSV beside it (same stem)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(rows), indent=2) + "\n")
    csv_path = path.with_suffix(".csv")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path, csv_path
