"""``lightnets export --format onnx|openvino [--precision int8]``: files for the runtimes that deploy a model.

Every path starts from the same ONNX export, checked against PyTorch in ONNX Runtime (:func:`export_onnx`). An
OpenVINO fp32 model is converted from it and checked against ONNX Runtime; INT8 files are quantised from it
(:mod:`lightnets.quantize`) and compared with it on the calibration images, where the top-1 agreement is printed.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightnets.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx
from lightnets.quantize import CALIBRATION_IMAGES, calibration_arrays, quantize_onnx, quantize_openvino
from lightnets.runtimes import META_KEY, onnxruntime_session, openvino_compile, openvino_ran, save_openvino

__all__ = ["OPENVINO_RTOL", "export_for_runtime", "top1_agreement"]

# OpenVINO's fp32 kernels (Winograd among them) sum in another order than ONNX Runtime's.
OPENVINO_RTOL = 1e-3


def top1_agreement(
    reference: Callable[[np.ndarray], np.ndarray], candidate: Callable[[np.ndarray], np.ndarray], arrays: list
) -> float:
    """Percentage of the images in ``arrays`` on which both give the same top-1 class."""
    same = total = 0
    for batch in arrays:
        same += int((reference(batch).argmax(1) == candidate(batch).argmax(1)).sum())
        total += batch.shape[0]
    return 100.0 * same / total


def export_for_runtime(
    model: nn.Module,
    out: Path,
    fmt: str,
    meta: dict[str, Any],
    metadata: dict[str, str],
    calibration_data: str | None,
    calibration_images: int | None,
    data_root: str | Path | None,
) -> dict[str, Any]:
    """Write ``model`` to ``out`` as ONNX or OpenVINO IR in ``meta["precision"]`` (fp32 or int8).

    ``meta`` describes the file (name, classes, preprocessing) and goes into the ONNX metadata under
    :data:`META_KEY` (``metadata`` holds the other keys) or the OpenVINO sidecar. Returns what was checked.
    """
    size = int(meta["input_size"])
    threads = torch.get_num_threads()
    int8 = meta["precision"] == "int8"
    with tempfile.TemporaryDirectory(prefix="lightnets-export-") as workdir:
        fp32_path = out if fmt == "onnx" and not int8 else Path(workdir) / "fp32.onnx"
        calibration = None
        if int8:
            # Read (and checked) before the slower export, so a bad --calibration-data fails at once.
            count = calibration_images or CALIBRATION_IMAGES
            calibration = calibration_arrays(str(calibration_data), meta, count, data_root=data_root)
            meta["calibration"] = {"data": calibration_data, "images": sum(len(batch) for batch in calibration)}
            metadata = {**metadata, META_KEY: json.dumps(meta)}
        result = export_onnx(model, fp32_path, size, metadata=metadata)
        diffs = ", ".join(
            f"batch {b}: max abs {result['max_abs_diff'][b]:.2e} (rel {result['max_rel_diff'][b]:.2e})"
            for b in result["max_abs_diff"]
        )
        written = f"wrote {out}" if fp32_path == out else "exported fp32 ONNX"
        print(f"{written} ({result['exporter']}, opset {result['opset']}, input {size}); onnxruntime check: {diffs}")
        fp32_session = onnxruntime_session(fp32_path, threads)

        def fp32_run(batch: np.ndarray) -> np.ndarray:
            return fp32_session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]

        if fmt == "onnx" and int8:
            layers = quantize_onnx(fp32_path, out, calibration, metadata)
            int8_session = onnxruntime_session(out, threads)
            agreement = top1_agreement(
                fp32_run, lambda batch: int8_session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0], calibration
            )
            result.update(layers, top1_agreement=agreement)
            print(
                f"wrote {out}: INT8 QDQ, {layers['quantized_convs']}/{layers['convs']} conv/matmul layers with "
                f"per-channel int8 weights; top-1 agrees with fp32 on {agreement:.1f}% of the "
                f"{meta['calibration']['images']} calibration images"
            )
        elif fmt == "openvino":
            openvino = _require_openvino()
            ov_model = quantize_openvino(fp32_path, calibration) if int8 else openvino.convert_model(str(fp32_path))
            compiled = openvino_compile(ov_model, threads, "fp32")
            request = compiled.create_infer_request()

            def ov_run(batch: np.ndarray) -> np.ndarray:
                return np.array(request.infer({0: batch})[0])

            if int8:
                result["top1_agreement"] = top1_agreement(fp32_run, ov_run, calibration)
                check = (
                    f"top-1 agrees with fp32 on {result['top1_agreement']:.1f}% of the "
                    f"{meta['calibration']['images']} calibration images"
                )
            else:
                check = _check_openvino(fp32_run, ov_run, meta, size, out)
            result["ran"] = openvino_ran(compiled)
            save_openvino(ov_model, out, meta)
            print(f"wrote {out} (+ .bin, .xml.json): OpenVINO {meta['precision']}, ran as {result['ran']}; {check}")
    return result


def _require_openvino() -> Any:
    from lightnets.models._safetensors import require_module

    return require_module("openvino")


def _check_openvino(
    reference: Callable[[np.ndarray], np.ndarray],
    candidate: Callable[[np.ndarray], np.ndarray],
    meta: dict[str, Any],
    size: int,
    out: Path,
) -> str:
    generator = np.random.default_rng(1)
    worst = 0.0
    for batch in (1, 4):
        images = generator.standard_normal((batch, 3, size, size), dtype=np.float32)
        expected, actual = reference(images), candidate(images)
        scale = float(np.abs(expected).max()) or 1.0
        worst = max(worst, float(np.abs(actual - expected).max()) / scale)
    if not worst <= OPENVINO_RTOL:  # written so that NaN fails too
        raise ValueError(
            f"OpenVINO's output for {meta['model_name']} differs from ONNX Runtime's by {worst:.3g} relative to the "
            f"largest logit (> {OPENVINO_RTOL:g}); {out} was not written"
        )
    return f"OpenVINO vs ORT: max rel {worst:.1e}"
