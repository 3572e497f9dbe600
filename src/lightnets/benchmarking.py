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
import os
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
from lightnets.files import atomic_path, atomic_write
from lightnets.models import create_model, reparameterize_model
from lightnets.runtime import device_name
from lightnets.tables import format_table

__all__ = [
    "BenchSettings",
    "bench_models",
    "device_name",
    "interleaved_latencies",
    "make_runner",
    "print_bench_rows",
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


# --------------------------------------------------------------------------------------------- output


def write_rows(rows: Sequence[dict[str, Any]], path: str | Path) -> tuple[Path, Path]:
    """Write ``rows`` as a JSON list to ``path`` and as CSV beside it (same stem)."""
    path = Path(path)
    atomic_write(path, json.dumps(list(rows), indent=2) + "\n")
    csv_path = path.with_suffix(".csv")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path, csv_path


def print_bench_rows(rows: Sequence[dict[str, Any]], markdown: bool = False) -> None:
    headers = ["model", "backend", "batch", "input", "params (M)", "MACs (M)", "median ms", "IQR ms", "img/s"]
    headers += ["GMAC/s", "peak MB", "compile s"]
    table = [
        [
            r["model"],
            r["backend"],
            r["batch_size"],
            r["input_size"],
            f"{r['params'] / 1e6:.3f}",
            f"{r['macs'] / 1e6:.1f}",
            f"{r['latency_ms_median']:.2f}",
            f"{r['latency_ms_iqr']:.2f}",
            f"{r['images_per_s']:.1f}",
            f"{r['gmacs_per_s']:.2f}",
            f"{r['peak_memory_mb']:.1f}",
            "" if r["compile_s"] is None else f"{r['compile_s']:.1f}",
        ]
        for r in rows
    ]
    print(format_table(headers, table, markdown=markdown))
