"""``lightnets export``: a model, from its weights, as ONNX, OpenVINO IR or safetensors, in fp32 or calibrated INT8.

Every ONNX and OpenVINO path starts from the same ONNX export, checked against PyTorch in ONNX Runtime
(:func:`lightnets.deploy.onnx.export_onnx`). An OpenVINO fp32 model is converted from it and checked against ONNX
Runtime; INT8 files are quantised from it (:mod:`lightnets.deploy.quantize`) and compared with it on the calibration
images, where the top-1 agreement is printed. Safetensors is :mod:`lightnets.deploy.safetensors`.

onnx, onnxruntime, openvino and nncf are optional (``pip install 'lightnets[export]'``) and imported on use.
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

from lightnets.data import IMAGENET_MEAN, IMAGENET_STD
from lightnets.deploy.onnx import INPUT_NAME, OUTPUT_NAME, export_onnx
from lightnets.deploy.quantize import (
    CALIBRATION_IMAGES,
    WEIGHT_BITS,
    calibration_arrays,
    check_weight_bits,
    quantize_onnx,
    quantize_openvino,
)
from lightnets.deploy.safetensors import export_safetensors
from lightnets.deploy.sessions import META_KEY, onnxruntime_session, openvino_compile, openvino_ran, save_openvino
from lightnets.files import check_writable
from lightnets.models import create_model, reparameterize_model
from lightnets.models.errors import require_module
from lightnets.models.model_cfg import image_size
from lightnets.models.weights import PRETRAINED_CFG_KEYS, load_weights, read_weights

__all__ = ["OPENVINO_RTOL", "export_for_runtime", "export_model", "preprocessing_of", "top1_agreement"]


def preprocessing_of(model: nn.Module, input_size: int | None = None) -> dict[str, Any]:
    """The inputs ``model``'s weights expect: input size, resize, mean, std, channel order (its ``pretrained_cfg``,
    which a lightnets checkpoint fills from its training data, else lightnets' ImageNet defaults)."""
    cfg = getattr(model, "pretrained_cfg", {})
    size = int(input_size or image_size(cfg) or getattr(model, "default_input_size", 224))
    return {
        "input_size": size,
        "eval_resize": int(cfg.get("eval_resize") or round(size / cfg.get("crop_pct", 0.875))),
        "mean": list(cfg.get("mean", IMAGENET_MEAN)),
        "std": list(cfg.get("std", IMAGENET_STD)),
        "channel_order": cfg.get("channel_order", "RGB"),
    }


def export_model(
    out: str | Path,
    fmt: str,
    *,
    model_name: str | None = None,
    checkpoint: str | Path | None = None,
    model_kwargs: dict[str, Any] | None = None,
    ema: bool = False,
    deploy: bool | None = None,
    input_size: int | None = None,
    num_classes: int | None = None,
    precision: str = "fp32",
    calibration_data: str | None = None,
    calibration_images: int | None = None,
    data_root: str | Path | None = None,
    int8_weight_bits: int | None = None,
) -> Path:
    """``lightnets export``: the model of ``checkpoint`` (or ``model_name``, untrained) as ONNX, OpenVINO IR or
    safetensors; ONNX and OpenVINO in fp32 or, calibrated on ``calibration_data``'s training images, INT8.

    A file that names its model needs no ``model_name``; the authors' files do. The inputs the weights expect (the
    authors' mean, std and channel order) are recorded in the ONNX metadata, the OpenVINO sidecar or the
    safetensors sidecar. ``deploy`` defaults to the deploy form for OpenVINO and INT8, the form they are run in.
    """
    if fmt not in ("onnx", "openvino", "safetensors"):
        raise ValueError(f"--format must be onnx, openvino or safetensors, got {fmt!r}")
    if fmt == "openvino" and Path(out).suffix.lower() != ".xml":
        raise ValueError(f"--out {out}: an OpenVINO model is written as NAME.xml (+ NAME.bin); give a .xml path")
    if precision not in ("fp32", "int8"):
        raise ValueError(f"--precision must be fp32 or int8, got {precision!r}")
    if precision == "int8" and fmt == "safetensors":
        raise ValueError("--precision int8 is for --format onnx or openvino; safetensors holds the fp32 weights")
    if precision == "int8" and not calibration_data:
        raise ValueError(
            "--precision int8 needs --calibration-data SPEC: the training images (as for train --data) whose "
            "activation ranges the quantiser calibrates on"
        )
    if precision != "int8" and (calibration_data or calibration_images or int8_weight_bits):
        raise ValueError("--calibration-data, --calibration-images and --int8-weight-bits are for --precision int8")
    if precision == "int8":
        int8_weight_bits = check_weight_bits(int8_weight_bits or WEIGHT_BITS)
    if deploy is None:
        deploy = fmt == "openvino" or precision == "int8"
    check_writable(out, "--out")  # before the minutes an export can take
    kwargs = dict(model_kwargs or {})
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    classes, weights = None, None
    if checkpoint:
        weights = read_weights(checkpoint, ema=ema)
        if weights.model_name:
            if model_name and model_name != weights.model_name:
                raise ValueError(
                    f"checkpoint {checkpoint} holds {weights.model_name!r}, not {model_name!r}; drop --model"
                )
            model_name = weights.model_name
        elif not model_name:
            raise ValueError(f"{weights.path} ({weights.describe()}) does not name its model; give --model NAME")
        # The file's kwargs (e.g. num_classes) first: the export must rebuild the model it holds.
        kwargs = {**weights.model_kwargs, **kwargs}
        classes = weights.classes
    elif ema:
        raise ValueError("--ema selects the EMA weights of a --checkpoint; give one")
    if not model_name:
        raise ValueError("give --model NAME (or --checkpoint CKPT, which names its model)")
    model = create_model(model_name, **kwargs).eval()
    if weights is not None:
        model = load_weights(model, weights).eval()
        print(f"loaded {model.pretrained_cfg['loaded']} from {weights.path}")
    if deploy:
        model = reparameterize_model(model)
    # The inputs the weights expect (the authors' mean, std, channel order) travel with the exported file.
    cfg = getattr(model, "pretrained_cfg", {})
    preprocess = {key: cfg[key] for key in PRETRAINED_CFG_KEYS if key in cfg}
    if "input_size" in preprocess:  # the side as files record it (an int), not timm's (C, H, W)
        preprocess["input_size"] = image_size(cfg)
    out = Path(out)
    if fmt == "safetensors":
        path = export_safetensors(
            model,
            out,
            model_name=model_name,
            model_kwargs=kwargs,
            classes=classes,
            extra={"deploy": deploy, **preprocess},
        )
        print(
            f"wrote {path} and its sidecar; load with lightnets.create_model({model_name!r}, checkpoint={str(path)!r})"
        )
    else:
        inputs = preprocessing_of(model, input_size)
        extra = weights.extra if weights is not None else {}
        meta = {
            "format": "lightnets-export",
            "model_name": model_name,
            "classes": list(classes) if classes is not None else None,
            **inputs,
            "precision": precision,
            **({"int8_weight_bits": int8_weight_bits} if precision == "int8" else {}),
            "deploy": deploy,
            "source": str(Path(weights.path).resolve()) if weights is not None else None,
            "val_split": extra.get("val_split"),
            "seed": extra.get("seed", 0),
        }
        # Each key on its own as well, as lightnets wrote them before META_KEY existed.
        metadata = {key: json.dumps(value) for key, value in preprocess.items()}
        metadata[META_KEY] = json.dumps(meta)
        export_for_runtime(model, out, fmt, meta, metadata, calibration_data, calibration_images, data_root)
    if preprocess:
        print("inputs it expects: " + ", ".join(f"{key} {value}" for key, value in preprocess.items()))
    return out


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
            layers = quantize_onnx(fp32_path, out, calibration, metadata, weight_bits=meta["int8_weight_bits"])
            int8_session = onnxruntime_session(out, threads)
            agreement = top1_agreement(
                fp32_run, lambda batch: int8_session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0], calibration
            )
            result.update(layers, top1_agreement=agreement)
            print(
                f"wrote {out}: INT8 QDQ, {layers['quantized_convs']}/{layers['convs']} conv/matmul layers with "
                f"per-channel int8 weights ({layers['weight_bits']}-bit); top-1 agrees with fp32 on {agreement:.1f}% "
                f"of the {meta['calibration']['images']} calibration images"
            )
        elif fmt == "openvino":
            openvino = _require_openvino()
            ov_model = (
                quantize_openvino(fp32_path, calibration, weight_bits=meta["int8_weight_bits"])
                if int8
                else openvino.convert_model(str(fp32_path))
            )
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
