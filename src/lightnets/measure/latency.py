"""Latency and throughput on the user's own device: eager, compiled, ONNX Runtime and OpenVINO, each in the
precisions it can run (:mod:`lightnets.measure.backends`), plus the operator study.

Every timing uses ``torch.utils.benchmark.Timer`` with an explicit thread count, after warm-up calls, and
with a CUDA synchronisation inside the timed statement on GPUs; ONNX Runtime and OpenVINO get the same thread
count. Each row says the precision that ran (``ran``); with a checkpoint and data, rows in another precision than
fp32 also carry their top-1 on the data's evaluation split and its change from eager fp32.
Figures are per call of one batch: ``latency_ms_median`` and its inter-quartile range over the timed
blocks, ``images_per_s`` = batch / median, ``gmacs_per_s`` = MACs per image x images/s / 1e9.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark as torch_benchmark

from lightnets.device import describe_cpu_features, device_name
from lightnets.files import atomic_path, atomic_write
from lightnets.measure.accuracy import bench_targets, calibration_for
from lightnets.measure.backends import PRECISIONS, Exports, Runner, Skipped, make_precision_runner
from lightnets.measure.counting import count_macs, count_params
from lightnets.tables import format_table

__all__ = [
    "BenchResult",
    "BenchSettings",
    "bench",
    "bench_models",
    "device_name",
    "interleaved_latencies",
    "make_runner",
    "print_bench_rows",
    "synchronised",
    "time_call",
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
BACKENDS = ("eager", "compile", "onnxruntime", "openvino")
_DTYPE_PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


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
    dtype: str = "float32"  # the one precision when ``precisions`` is not given (the --dtype of earlier versions)
    min_run_time: float = 1.0
    warmup: int = 3
    precisions: list[str] | None = None  # fp32, bf16, fp16, int8
    checkpoint: str | None = None  # bench this checkpoint's model (with data: and its accuracy per precision)
    data: str | None = None  # INT8 calibration images (train split) and, with a checkpoint, the accuracy split
    data_root: str | None = None
    calibration_images: int = 300
    int8_weight_bits: int = 7  # 7: safe on every CPU; 8 saturates int8 kernels on CPUs without VNNI

    def __post_init__(self) -> None:
        unknown = sorted(set(self.backends) - set(BACKENDS))
        if unknown:
            raise ValueError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
        if self.dtype not in _DTYPE_PRECISION:
            raise ValueError(f"--dtype must be float32, bfloat16 or float16, got {self.dtype}")
        if self.precisions is None:
            self.precisions = [_DTYPE_PRECISION[self.dtype]]
        wrong = sorted(set(self.precisions) - set(PRECISIONS))
        if wrong or not self.precisions:
            raise ValueError(f"unknown precision(s) {', '.join(wrong)}; choose from {', '.join(PRECISIONS)}")
        from lightnets.deploy.quantize import check_weight_bits

        check_weight_bits(self.int8_weight_bits)
        if self.calibration_images < 1:
            raise ValueError(f"--calibration-images must be >= 1, got {self.calibration_images}")
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


def time_call(
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
    runner: Runner,
    precision: str,
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
        "compile_s": runner.compile_s,
        "precision": precision,
        "ran": runner.ran,
        "device": settings.device,
        "threads": settings.threads,
        "dtype": str(runner.input_dtype).removeprefix("torch.") if precision != "int8" else "int8",
        "channels_last": settings.channels_last,
    }


def synchronised(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    if device.type != "cuda":
        return fn

    def run() -> Any:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


def bench_models(
    settings: BenchSettings, log: Callable[[str], None] = print, skipped: list[dict[str, str]] | None = None
) -> list[dict[str, Any]]:
    """One row per model, backend, precision and batch size (see :data:`ROW_KEYS`, plus ``precision`` and ``ran``).

    A backend x precision that cannot run here is logged with the reason and appended to ``skipped``.
    """
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available here; use --device cpu")
    torch.set_num_threads(settings.threads)
    where = device_name(device) if device.type == "cuda" else f"CPU features {describe_cpu_features()}"
    log(f"{device_name(device)}; {where}; {settings.threads} threads")
    skipped = [] if skipped is None else skipped
    rows: list[dict[str, Any]] = []
    for name, model, size, accuracy in bench_targets(settings, log):
        params, macs = count_params(model), count_macs(model, size)
        memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
        model = model.to(device=device, memory_format=memory_format)
        exports = Exports(
            model, size, lambda a=accuracy, s=size: calibration_for(settings, a, s), settings.int8_weight_bits
        )
        reference_top1 = accuracy.top1(lambda x, m=model: m(x.to(device)).float()) if accuracy else None
        try:
            for backend in settings.backends:
                for precision in settings.precisions:
                    try:
                        runner = make_precision_runner(
                            backend, model, precision, size, settings.threads, device, exports
                        )
                    except Skipped as reason:
                        log(f"{name:28s} {backend:11s} {precision}: skipped: {reason}")
                        skipped.append(
                            {"model": name, "backend": backend, "precision": precision, "reason": str(reason)}
                        )
                        continue
                    top1 = None
                    if accuracy and precision != "fp32":
                        top1 = accuracy.top1(runner.predict)
                    for batch in settings.batch_sizes:
                        inputs = torch.randn(batch, 3, size, size, device=device, dtype=runner.input_dtype)
                        call = synchronised(runner.call(inputs.contiguous(memory_format=memory_format)), device)
                        with torch.inference_mode():
                            # Memory first: the first calls at a batch size are the ones that grow the allocators.
                            peak = PeakMemory(device).measure(call)
                            measurement = time_call(
                                call, settings.threads, settings.min_run_time, settings.warmup, name
                            )
                        row = _row(
                            name, backend, batch, size, settings, params, macs, measurement, peak, runner, precision
                        )
                        if reference_top1 is not None:
                            row["top1"] = top1 if top1 is not None else (reference_top1 if backend == "eager" else None)
                            row["top1_change"] = None if row["top1"] is None else row["top1"] - reference_top1
                        rows.append(row)
                        accuracy_note = f" top-1 {row['top1']:.2f}%" if row.get("top1") is not None else ""
                        log(
                            f"{name:28s} {backend:11s} {precision:4s} batch {batch:3d} @ {size}: "
                            f"{row['latency_ms_median']:9.2f} ms (IQR {row['latency_ms_iqr']:.2f}) "
                            f"{row['images_per_s']:9.1f} img/s, ran {runner.ran}{accuracy_note}"
                        )
        finally:
            exports.cleanup()
    return rows


@dataclass
class BenchResult:
    """What :func:`bench` measured: one row per model, backend, precision and batch size, and what was skipped."""

    rows: list[dict[str, Any]]
    skipped: list[dict[str, str]]  # model, backend, precision and the reason it cannot run here

    def best(self) -> list[dict[str, Any]]:
        """The fastest (backend, precision) per model and batch size, against eager fp32."""
        from lightnets.measure.best import best_paths

        return best_paths(self.rows)


def bench(settings: BenchSettings | None = None, *, log: Callable[[str], None] = print) -> BenchResult:
    """Latency, throughput and (with ``settings.checkpoint`` and ``settings.data``) top-1 of every model in
    ``settings`` on each backend and precision; what cannot run here is skipped with its reason, not an error.

    ``lightnets.measure(BenchSettings(models=["spgnet_s2p6_cifar"], batch_sizes=[1], backends=["eager"]))`` is
    ``lightnets bench --models spgnet_s2p6_cifar --batch-sizes 1 --backends eager``; ``log`` gets each line.
    """
    skipped: list[dict[str, str]] = []
    rows = bench_models(settings or BenchSettings(), log=log, skipped=skipped)
    return BenchResult(rows, skipped)


def make_runner(backend: str, model: nn.Module, size: int, settings: BenchSettings, device: torch.device):
    """(inputs -> zero-argument callable, compile seconds, cleanup) for one backend in fp32."""
    exports = Exports(model, size, lambda: calibration_for(settings, None, size), settings.int8_weight_bits)
    try:
        runner = make_precision_runner(backend, model, "fp32", size, settings.threads, device, exports)
    except Skipped as reason:
        exports.cleanup()
        raise ValueError(f"{backend} cannot run here: {reason}") from None
    return runner.call, runner.compile_s, exports.cleanup


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
                medians[label].append(time_call(calls[label], threads, min_run_time, 0, label, clock).median)
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
    headers = ["model", "backend", "precision", "ran", "batch", "input", "params (M)", "MACs (M)", "median ms"]
    headers += ["IQR ms", "img/s", "GMAC/s", "peak MB", "compile s"]
    table = [
        [
            r["model"],
            r["backend"],
            r.get("precision", "fp32"),
            r.get("ran", r.get("precision", "fp32")),
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
