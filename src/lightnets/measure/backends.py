"""The backends ``bench`` times, each in the precisions it can really run: PyTorch eager and ``torch.compile``,
ONNX Runtime (CPU, or its CUDA provider) and OpenVINO (CPU), all three of the latter fed from one ONNX export.

A backend x precision that cannot run on this machine raises :class:`Skipped` with the reason; one that runs
names the precision that actually ran (OpenVINO's from its execution graph), since OpenVINO would otherwise pick
bf16 by itself where the CPU has it. INT8 files are calibrated on the user's images when ``bench`` is given data
(:mod:`lightnets.deploy.quantize`), otherwise on random stand-ins, which time the same but say nothing of accuracy.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightnets.deploy.onnx import INPUT_NAME, OUTPUT_NAME
from lightnets.deploy.sessions import openvino_core, signal_stack_kept
from lightnets.device import cpu_features, cpu_has_native_bf16
from lightnets.models.errors import require_module

__all__ = ["PRECISIONS", "TORCH_DTYPES", "Exports", "Runner", "Skipped", "make_precision_runner"]

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Skipped(Exception):
    """This backend x precision cannot run here; the message says why."""


@dataclass
class Runner:
    """``call(inputs)`` gives the zero-argument call that is timed; ``predict`` maps a float32 batch to logits
    (for accuracy); ``ran`` is the precision that actually ran."""

    call: Callable[[torch.Tensor], Callable[[], Any]]
    predict: Callable[[torch.Tensor], torch.Tensor]
    ran: str
    compile_s: float | None = None
    input_dtype: torch.dtype = torch.float32


class Exports:
    """One model's ONNX export and INT8 files, made on first use and shared by every backend and precision.

    ``seconds`` holds what each took to make (the export, the quantisation), reported as the row's ``compile_s``.
    """

    def __init__(
        self, model: nn.Module, size: int, calibration: Callable[[], list[np.ndarray]], int8_weight_bits: int = 7
    ) -> None:
        self.model, self.size, self._calibration = model, size, calibration
        self.int8_weight_bits = int8_weight_bits
        self._workdir = tempfile.TemporaryDirectory(prefix="lightnets-bench-")
        self.dir = Path(self._workdir.name)
        self._made: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._made:
            start = time.perf_counter()
            self._made[key] = make()
            self.seconds[key] = time.perf_counter() - start
        return self._made[key]

    def calibration(self) -> list[np.ndarray]:
        return self._once("calibration", self._calibration)

    def _export(self, precision: str) -> Path:
        from lightnets.deploy.onnx import export_onnx

        path = self.dir / f"{precision}.onnx"
        if precision == "fp16":
            # The fp32 export with its weights and activations converted to fp16 by ONNX Runtime's own converter;
            # inputs and outputs stay fp32 (one Cast each), so every ORT row is fed the same way.
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            half = convert_float_to_float16(onnx.load(str(self.onnx())), keep_io_types=True)
            onnx.save(half, str(path))
            return path
        # A copy: the model itself stays as the other backends use it.
        source = copy.deepcopy(self.model).float().to(memory_format=torch.contiguous_format)
        export_onnx(source, path, self.size, check=False)
        return path

    def onnx(self, precision: str = "fp32") -> Path:
        return self._once(f"onnx-{precision}", lambda: self._export(precision))

    def onnx_int8(self) -> tuple[Path, dict[str, int]]:
        from lightnets.deploy.quantize import quantize_onnx

        path, bits = self.dir / "int8.onnx", self.int8_weight_bits
        fp32 = self.onnx()
        return self._once("onnx-int8", lambda: (path, quantize_onnx(fp32, path, self.calibration(), weight_bits=bits)))

    def openvino_int8(self) -> Any:
        from lightnets.deploy.quantize import quantize_openvino

        fp32 = self.onnx()
        bits = self.int8_weight_bits
        return self._once("openvino-int8", lambda: quantize_openvino(fp32, self.calibration(), weight_bits=bits))

    def cleanup(self) -> None:
        self._workdir.cleanup()


def _torch_runner(backend: str, model: nn.Module, precision: str, size: int, device: torch.device) -> Runner:
    if precision == "int8":
        raise Skipped(
            "PyTorch has no INT8 inference path in lightnets (torch.ao quantisation is deprecated); "
            "onnxruntime and openvino run INT8"
        )
    if precision == "fp16" and device.type != "cuda":
        raise Skipped("fp16 is a GPU precision here: CPUs without AVX512-FP16 or AMX-FP16 convert every op")
    dtype = TORCH_DTYPES[precision]
    # A copy for other precisions: Module.to works in place, and the next rows need the fp32 model.
    typed = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    ran = precision
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        ran = "bf16 (emulated: no AVX512-BF16 or AMX)"
    if precision == "fp32" and device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        # PyTorch's default on GPUs since 1.7: cuDNN may run fp32 convolutions with TF32 tensor-core math.
        ran = "fp32 (TF32 convolutions allowed)"
    compile_s = None
    if backend == "compile":
        # Dynamo's caches are per code object, shared by every copy and model built from the same layer classes:
        # without a reset, a few precisions x batch sizes reach its recompile limit and later rows run eager.
        torch.compiler.reset()
        typed = torch.compile(typed, dynamic=False)
        start = time.perf_counter()
        with torch.inference_mode():
            typed(torch.randn(1, 3, size, size, device=device, dtype=dtype))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        compile_s = time.perf_counter() - start

    def predict(x: torch.Tensor) -> torch.Tensor:
        return typed(x.to(device, dtype)).float()

    return Runner(lambda x: lambda: typed(x), predict, ran, compile_s, dtype)


def _onnxruntime_runner(exports: Exports, precision: str, threads: int, device: torch.device) -> Runner:
    from lightnets.deploy.sessions import onnxruntime_session

    cuda = device.type == "cuda"
    if cuda:
        ort = require_module("onnxruntime")
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            # Said before anything is exported: the CPU-only wheel cannot run any precision on the GPU.
            raise Skipped(f"onnxruntime {ort.__version__} here has no CUDA provider (install onnxruntime-gpu)")
    if precision == "bf16":
        raise Skipped("ONNX Runtime has no bf16 convolution kernels (CPU or CUDA provider)")
    if precision == "fp16" and not cuda:
        raise Skipped("ONNX Runtime's CPU provider has no fp16 convolution kernels")
    if precision == "int8" and cuda:
        raise Skipped("INT8 on a GPU needs TensorRT's provider, which lightnets does not cover")
    try:
        if precision == "int8":
            path, layers = exports.onnx_int8()
            convs = f"{layers['quantized_convs']}/{layers['convs']}"
            ran = f"int8 (QDQ, {convs} conv/matmul int8, {layers['weight_bits']}-bit weights)"
            made = exports.seconds["onnx-fp32"] + exports.seconds["onnx-int8"]
        else:
            path, ran = exports.onnx(precision), precision
            made = exports.seconds[f"onnx-{precision}"]
        session = onnxruntime_session(path, threads, device.type)
    except ValueError as error:
        raise Skipped(str(error)) from None

    def call(x: torch.Tensor) -> Callable[[], Any]:
        if not cuda:
            feed = {INPUT_NAME: x.float().contiguous().cpu().numpy()}
            return lambda: session.run(None, feed)
        # Inputs and outputs stay on the GPU (IO binding), as PyTorch's do: no host copies in the timing.
        # ``x`` is made on PyTorch's stream; wait for it before ORT's own stream reads the pointer.
        x = x.float().contiguous()
        torch.cuda.synchronize(device)
        binding = session.io_binding()
        binding.bind_input(INPUT_NAME, "cuda", device.index or 0, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(OUTPUT_NAME, "cuda", device.index or 0)
        return lambda: (x, session.run_with_iobinding(binding))

    def predict(x: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.float().cpu().numpy()})
        return torch.from_numpy(logits.astype(np.float32))

    return Runner(call, predict, ran, made)


def _openvino_runner(exports: Exports, precision: str, threads: int, device: torch.device) -> Runner:
    from lightnets.deploy.sessions import openvino_compile, openvino_ran

    if device.type != "cpu":
        raise Skipped("OpenVINO runs on the CPU here (its GPU plugin is for Intel GPUs, not CUDA devices)")
    capabilities = _openvino_capabilities()
    if precision == "bf16" and "BF16" not in capabilities:
        raise Skipped(f"OpenVINO finds no bf16 support on this CPU ({' '.join(cpu_features()) or 'no features'})")
    if precision == "fp16" and "FP16" not in capabilities:
        raise Skipped("OpenVINO finds no fp16 compute on this CPU (it needs AMX-FP16)")
    model = exports.openvino_int8() if precision == "int8" else exports.onnx()
    made = exports.seconds["onnx-fp32"] + (exports.seconds["openvino-int8"] if precision == "int8" else 0.0)
    # INT8's unquantised layers in fp32, set explicitly (OpenVINO would choose bf16 by itself where it can).
    hint = "fp32" if precision == "int8" else precision
    compiled_by_batch: dict[int, Any] = {}

    def compiled_for(batch: int) -> Any:
        if batch not in compiled_by_batch:
            compiled_by_batch[batch] = openvino_compile(model, threads, hint, batch_size=batch)
        return compiled_by_batch[batch]

    ran = openvino_ran(compiled_for(1))
    if precision not in ran.split()[0]:
        raise Skipped(f"OpenVINO ran the {precision} request as {ran}")

    def call(x: torch.Tensor) -> Callable[[], Any]:
        request = compiled_for(x.shape[0]).create_infer_request()
        feed = {0: x.float().contiguous().cpu().numpy()}
        return lambda: request.infer(feed, share_inputs=True)

    dynamic = openvino_compile(model, threads, hint)
    dynamic_request = dynamic.create_infer_request()

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.array(dynamic_request.infer({0: x.cpu().numpy()})[0], dtype=np.float32))

    return Runner(call, predict, ran, made)


def _openvino_capabilities() -> tuple[str, ...]:
    with signal_stack_kept():
        return tuple(openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def make_precision_runner(
    backend: str, model: nn.Module, precision: str, size: int, threads: int, device: torch.device, exports: Exports
) -> Runner:
    """The :class:`Runner` of ``backend`` in ``precision``, or :class:`Skipped` saying why it cannot run here."""
    if backend in ("eager", "compile"):
        return _torch_runner(backend, model, precision, size, device)
    try:
        if backend == "onnxruntime":
            return _onnxruntime_runner(exports, precision, threads, device)
        return _openvino_runner(exports, precision, threads, device)
    except ImportError as error:  # require_module's message says what to install
        raise Skipped(str(error)) from None
