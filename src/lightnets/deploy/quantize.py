"""Static post-training INT8 quantisation, calibrated on the user's own images.

Both runtimes get the deploy-form ONNX export (checked against PyTorch) and the same calibration images: the
training split of ``--calibration-data``, a seeded random sample of ``--calibration-images`` of them, resized,
cropped and normalised exactly as the checkpoint's evaluation does. Weights are quantised per output channel
(per-tensor scales wreck depthwise convolutions), activations per tensor.

- ONNX Runtime: ``quant_pre_process`` (symbolic shape inference and ORT's graph optimisation) then
  ``quantize_static`` in QDQ format, int8 weights and uint8 activations from min/max calibration, the format
  whose convolutions ORT's CPU provider runs as int8 kernels (VNNI where the CPU has it).
  The weights use 7 of their 8 bits by default (``reduce_range``). On a CPU without VNNI (AVX2, and AVX-512
  without VNNI) ORT's u8 x s8 kernels add pairs of products in 16 bits (``vpmaddubsw``), which saturates when an
  8-bit weight meets a large activation: on the AVX2 machine of docs/results/deploy.md the shipped CIFAR-10 weights
  lost 8.2 and 10.4 points of top-1 with 8-bit weights and 0.6 and 0.3 with 7-bit ones (255 x 64 x 2 fits in 16
  bits). The file runs wherever it is copied, so the default is the one that is safe everywhere; ``weight_bits=8``
  (``--int8-weight-bits 8``) is for files that will only run on VNNI or AMX CPUs.
- OpenVINO: ``nncf.quantize`` on the converted model; NNCF knows the patterns it must leave in float (the
  hard-swish and SE branches of AsymmNet among them) and adds fast bias correction. Its overflow fix (7-bit
  weights) is applied to every layer by default, for the same reason as below.

openvino, nncf and onnxruntime are optional (``pip install 'lightnets[export]'``) and imported on use.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightnets.deploy.onnx import INPUT_NAME
from lightnets.deploy.sessions import signal_stack_kept
from lightnets.files import atomic_path
from lightnets.models.errors import first_line, require_module

__all__ = [
    "CALIBRATION_IMAGES",
    "WEIGHT_BITS",
    "calibration_arrays",
    "quantize_onnx",
    "quantize_openvino",
    "random_calibration",
]

CALIBRATION_IMAGES = 300  # NNCF's default subset size; enough for min/max ranges of these CNNs
WEIGHT_BITS = 7  # see the module docstring: 8-bit weights saturate ORT's int8 kernels on CPUs without VNNI
_BATCH = 32


def calibration_arrays(
    spec: str,
    preprocessing: dict[str, Any],
    count: int = CALIBRATION_IMAGES,
    *,
    data_root: str | Path | None = None,
    seed: int = 0,
    workers: int = 0,
) -> list[np.ndarray]:
    """``count`` training images of ``spec`` as float32 NCHW batches, preprocessed as the model evaluates.

    ``preprocessing`` has ``input_size``, ``eval_resize``, ``mean``, ``std`` and ``channel_order`` (a checkpoint's,
    see :func:`lightnets.deploy.export.preprocessing_of`). The images are a seeded random sample of the training split,
    so that a folder dataset, stored class by class, gives every class.
    """
    from lightnets.data import TensorSplit, eval_transform, load_dataset
    from lightnets.data.batches import Preprocess, batches
    from lightnets.data.folder import ImageFolderSplit

    if count < 1:
        raise ValueError(f"--calibration-images must be >= 1, got {count}")
    size = int(preprocessing["input_size"])
    bundle = load_dataset(spec, data_root=data_root, input_size=size)
    train = bundle.train
    total = len(train.labels) if isinstance(train, TensorSplit) else len(train)
    if total == 0:
        raise ValueError(f"--calibration-data {spec} has no training images to calibrate on")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[: min(count, total)]
    if isinstance(train, TensorSplit):
        split: Any = TensorSplit(train.images[order], train.labels[order])
    else:
        # The evaluation transform (resize, centre crop), not the training split's random crops.
        transform = eval_transform(size, int(preprocessing["eval_resize"]))
        split = ImageFolderSplit([train.samples[i] for i in order.tolist()], train.classes, transform)
    preprocess = Preprocess(
        preprocessing["mean"],
        preprocessing["std"],
        size,
        channels_last=False,
        bgr=preprocessing.get("channel_order") == "BGR",
    )
    arrays = []
    with torch.no_grad():
        for images, _ in batches(split, _BATCH, torch.device("cpu"), train=False, workers=workers):
            if len(images):
                arrays.append(preprocess(images).numpy())
    if not arrays:
        raise ValueError(f"--calibration-data {spec}: none of the sampled training images could be read")
    return arrays


def random_calibration(count: int, input_size: int, channels: int = 3, seed: int = 0) -> list[np.ndarray]:
    """Standard-normal stand-ins for calibration images: for timing and tests only, never for accuracy."""
    generator = np.random.default_rng(seed)
    sizes = [min(_BATCH, count - start) for start in range(0, count, _BATCH)]
    return [generator.standard_normal((n, channels, input_size, input_size), dtype=np.float32) for n in sizes]


@contextlib.contextmanager
def _quiet_quantizers() -> Iterator[None]:
    # ORT's quantiser logs a warning per bias it leaves in float on the root logger, NNCF draws progress bars:
    # neither tells the user anything the summary line does not.
    # Importing nncf makes torch warn that it found no CUDA runtime, which is no news on a CPU machine.
    loggers = [logging.getLogger(name) for name in ("", "nncf", "torch.utils.cpp_extension")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of batches."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self._batches = iter(arrays)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def check_weight_bits(weight_bits: int) -> int:
    if weight_bits not in (7, 8):
        raise ValueError(
            f"--int8-weight-bits must be 7 (safe on every CPU) or 8 (only for CPUs with VNNI or AMX), got {weight_bits}"
        )
    return weight_bits


def quantize_onnx(
    fp32_path: str | Path,
    out: str | Path,
    calibration: list[np.ndarray],
    metadata: dict[str, str] | None = None,
    *,
    weight_bits: int = WEIGHT_BITS,
) -> dict[str, Any]:
    """Write the QDQ INT8 form of ``fp32_path`` to ``out`` (atomically), calibrated on ``calibration``.

    ``metadata`` replaces the file's ``metadata_props`` (default: the fp32 file's). ``weight_bits``: 7 (the default,
    no saturation on any CPU) or 8 (see the module docstring). Returns ``{"quantized_convs": n, "convs": m,
    "weight_bits": b}``: how many convolutions and matrix products got int8 weights, and in how many bits.
    """
    check_weight_bits(weight_bits)
    onnx = require_module("onnx")
    quantization = require_module("onnxruntime.quantization")
    shape_inference = require_module("onnxruntime.quantization.shape_inference")
    fp32_path, out = Path(fp32_path), Path(out)
    if metadata is None:
        metadata = {prop.key: prop.value for prop in onnx.load(str(fp32_path)).metadata_props}
    with tempfile.TemporaryDirectory(prefix="lightnets-quantize-") as workdir, _quiet_quantizers():
        prepared = Path(workdir) / "prepared.onnx"
        try:
            shape_inference.quant_pre_process(str(fp32_path), str(prepared))
            quantized = Path(workdir) / "int8.onnx"
            quantization.quantize_static(
                str(prepared),
                str(quantized),
                _Reader(calibration),
                quant_format=quantization.QuantFormat.QDQ,
                per_channel=True,
                activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8,
                calibrate_method=quantization.CalibrationMethod.MinMax,
                reduce_range=weight_bits == 7,
            )
        except Exception as error:
            raise ValueError(f"ONNX Runtime could not quantise the export of {out.name}: {first_line(error)}") from None
        proto = onnx.load(str(quantized))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
    return {**onnx_int8_layers(proto), "weight_bits": weight_bits}


def onnx_int8_layers(proto: Any) -> dict[str, int]:
    """How many Conv/Gemm/MatMul nodes of a QDQ graph take their weights through a DequantizeLinear."""
    produced_by = {out: node.op_type for node in proto.graph.node for out in node.output}
    heavy = [node for node in proto.graph.node if node.op_type in ("Conv", "Gemm", "MatMul")]
    quantized = sum(len(node.input) > 1 and produced_by.get(node.input[1]) == "DequantizeLinear" for node in heavy)
    return {"quantized_convs": quantized, "convs": len(heavy)}


def quantize_openvino(onnx_path: str | Path, calibration: list[np.ndarray], *, weight_bits: int = WEIGHT_BITS) -> Any:
    """The OpenVINO model of ``onnx_path``, quantised to INT8 by ``nncf.quantize`` on ``calibration``.

    ``weight_bits`` 7 is NNCF's overflow fix in every layer (its own default applies it to the first layer only),
    8 turns it off: the same saturation as ONNX Runtime's (module docstring) costs OpenVINO's CPU plugin accuracy
    on CPUs without VNNI.
    """
    check_weight_bits(weight_bits)
    ov = require_module("openvino")
    model = ov.convert_model(str(onnx_path))
    # One image per item: NNCF's statistics (and its bias correction) assume a batch of one.
    images = [batch[i : i + 1] for batch in calibration for i in range(batch.shape[0])]
    with _quiet_quantizers(), signal_stack_kept():  # NNCF compiles the model on OpenVINO's CPU plugin
        nncf = require_module("nncf")
        advanced = require_module("nncf.quantization.advanced_parameters")
        overflow_fix = advanced.OverflowFix.ENABLE if weight_bits == 7 else advanced.OverflowFix.DISABLE
        try:
            return nncf.quantize(
                model,
                nncf.Dataset(images),
                subset_size=len(images),
                target_device=nncf.TargetDevice.CPU,
                advanced_parameters=advanced.AdvancedQuantizationParameters(overflow_fix=overflow_fix),
            )
        except Exception as error:
            raise ValueError(f"NNCF could not quantise {Path(onnx_path).name}: {first_line(error)}") from None
