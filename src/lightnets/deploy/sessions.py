"""Exported models in their own runtimes: ONNX Runtime sessions, OpenVINO compiled models, and the exported files
(``.onnx``, OpenVINO's ``.xml``) as callables that ``eval``, ``predict`` and ``bench`` use like PyTorch models.

Every session gets an explicit thread count, and every OpenVINO compilation an explicit precision hint: OpenVINO
otherwise runs bf16 wherever the CPU has it, and a figure must say which precision ran (:func:`openvino_ran`).

An exported file carries what inference needs beside it: the model name, classes and preprocessing (input size,
resize, mean, std, channel order) as JSON under :data:`META_KEY` in the ONNX file's metadata, and in a sidecar
``model.xml.json`` for OpenVINO. onnxruntime and openvino are optional (``pip install 'lightnets[export]'``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightnets.deploy.onnx import INPUT_NAME, OUTPUT_NAME
from lightnets.files import atomic_path, atomic_write
from lightnets.models.errors import first_line, require_module
from lightnets.models.safetensors_io import sidecar_path

__all__ = [
    "EXPORTED_SUFFIXES",
    "META_KEY",
    "ExportedModel",
    "exported_model_fields",
    "is_exported_file",
    "onnxruntime_session",
    "openvino_compile",
    "openvino_core",
    "openvino_ran",
    "read_export_meta",
    "save_openvino",
    "signal_stack_kept",
]

META_KEY = "lightnets"
EXPORTED_SUFFIXES = (".onnx", ".xml")
# The names lightnets uses for precisions, and OpenVINO's for its inference precision hint.
_OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
# What a compiled layer's runtimePrecision says, in lightnets' names.
_RAN_AS = {"u8": "int8", "i8": "int8", "f32": "fp32", "bf16": "bf16", "f16": "fp16"}


def is_exported_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in EXPORTED_SUFFIXES


def onnxruntime_session(model: str | Path | bytes, threads: int, device: str = "cpu") -> Any:
    """An ONNX Runtime session with ``threads`` intra-op threads on the CPU, or on CUDA's provider."""
    ort = require_module("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError(
                "ONNX Runtime here has no CUDA provider (install onnxruntime-gpu instead of onnxruntime), "
                "or use --device cpu"
            )
        providers = ["CUDAExecutionProvider"]
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=providers)


class _SignalStack(ctypes.Structure):  # stack_t of sigaltstack(2)
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def signal_stack_kept() -> Iterator[None]:
    """Give this thread back the alternate signal stack it had before the block.

    OpenVINO's CPU plugin, when it loads (the first ``compile_model`` or ``get_property`` on "CPU" of a ``Core``),
    sets the calling thread's alternate signal stack to memory of its own, and does not restore the old one; when
    the plugin is released the memory is unmapped while the kernel still has it as the thread's signal stack.
    CPython installs every Python signal handler with SA_ONSTACK, so the next such signal delivered to that
    thread (SIGCHLD, once a DataLoader with workers has set its handler, when any child process exits; SIGINT)
    finds no stack to run on and the kernel kills the process with SIGSEGV. Seen as a test process that died in
    ``poll`` while waiting for torchrun, after a DataLoader with workers and an OpenVINO benchmark.
    """
    libc = _libc()
    saved = _SignalStack()
    if libc is None or libc.sigaltstack(None, ctypes.byref(saved)) != 0:
        yield
        return
    try:
        yield
    finally:
        current = _SignalStack()
        if libc.sigaltstack(None, ctypes.byref(current)) == 0 and (current.ss_sp, current.ss_size) != (
            saved.ss_sp,
            saved.ss_size,
        ):
            libc.sigaltstack(ctypes.byref(saved), None)


@functools.cache
def _libc() -> Any:
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


@functools.cache
def openvino_core() -> Any:
    """lightnets' one OpenVINO ``Core``: the CPU plugin is loaded once and stays loaded for the process (and its
    loading leaves the thread's signal stack as it found it, see :func:`signal_stack_kept`)."""
    ov = require_module("openvino")
    with signal_stack_kept():
        return ov.Core()


def openvino_compile(model: Any, threads: int, precision: str = "fp32", batch_size: int | None = None) -> Any:
    """``model`` (a path or ``openvino.Model``) compiled for the CPU with ``threads`` threads, one stream, and the
    inference precision hint of ``precision`` set explicitly (an INT8 model's quantised layers run in int8 under
    any hint; its other layers follow the hint). ``batch_size`` fixes the batch axis, which lets OpenVINO plan
    static memory; without it the batch stays dynamic."""
    ov = require_module("openvino")
    core = openvino_core()
    if not isinstance(model, ov.Model):
        model = core.read_model(str(model))
    if batch_size is not None:
        shape = list(model.input(0).get_partial_shape())
        model = model.clone()
        model.reshape({0: ov.PartialShape([batch_size, *shape[1:]])})
    config = {
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": _OPENVINO_HINTS[precision],
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }
    with signal_stack_kept():
        return core.compile_model(model, "CPU", config)


def openvino_ran(compiled: Any) -> str:
    """The precision the compiled model's convolutions and fully connected layers actually run in, from
    OpenVINO's execution graph: ``"int8"``, ``"bf16"``, ``"fp32"``, or a mix such as ``"int8 60/63, fp32 3/63"``."""
    counts: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in ("Convolution", "FullyConnected"):
            precision = info["runtimePrecision"].astype(str).lower()
            counts[_RAN_AS.get(precision, precision)] += 1
    total = sum(counts.values())
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{name} {count}/{total}" for name, count in counts.most_common())


def save_openvino(model: Any, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``model`` as ``path`` (.xml) + its .bin (weights kept in fp32) + ``path.json`` (:data:`META_KEY`'s
    content), each atomically; the .bin is in place before the .xml that reads it."""
    ov = require_module("openvino")
    path = Path(path)
    if path.suffix.lower() != ".xml":
        raise ValueError(f"--out {path}: an OpenVINO model is written as NAME.xml (+ NAME.bin); give a .xml path")
    with atomic_path(path) as tmp_xml, atomic_path(path.with_suffix(".bin")) as tmp_bin:
        staging = tmp_xml.with_name(tmp_xml.name + ".xml")
        try:
            ov.save_model(model, str(staging), compress_to_fp16=False)
            os.replace(staging.with_suffix(".bin"), tmp_bin)
            os.replace(staging, tmp_xml)
        finally:
            staging.unlink(missing_ok=True)
            staging.with_suffix(".bin").unlink(missing_ok=True)
    atomic_write(sidecar_path(path), json.dumps(meta, indent=2) + "\n")
    return path


def read_export_meta(path: str | Path) -> dict[str, Any]:
    """What an exported file says about itself (model name, classes, preprocessing, precision); ``{}`` if nothing.

    ONNX files from earlier lightnets versions carry only the preprocessing, one JSON value per key; those are read
    too.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist; give the .onnx or .xml file that lightnets export wrote")
    if path.suffix.lower() == ".xml":
        side = sidecar_path(path)
        if not side.is_file():
            return {}
        try:
            return dict(json.loads(side.read_text()))
        except (OSError, ValueError) as error:
            raise ValueError(f"sidecar {side} is not readable JSON: {first_line(error)}") from None
    onnx = require_module("onnx")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise ValueError(f"{path} is not a readable ONNX file: {first_line(error)}") from None
    props = {prop.key: prop.value for prop in proto.metadata_props}
    if META_KEY in props:
        return dict(json.loads(props[META_KEY]))
    meta = {}
    for key, value in props.items():
        try:
            meta[key] = json.loads(value)
        except ValueError:
            continue
    dims = proto.graph.input[0].type.tensor_type.shape.dim if proto.graph.input else []
    if len(dims) == 4 and dims[-1].dim_value and "input_size" not in meta:
        meta["input_size"] = dims[-1].dim_value
    return meta


def exported_model_fields(path: str | Path, device: torch.device) -> dict[str, Any]:
    """The fields of :class:`lightnets.evaluation.InferenceModel` for an exported file: the file in its runtime,
    and the classes and preprocessing stored with it (lightnets' ImageNet defaults where it has none)."""
    from lightnets.data import IMAGENET_MEAN, IMAGENET_STD

    meta = read_export_meta(path)
    model = ExportedModel(path, device=device.type)
    size = int(meta.get("input_size") or 224)
    ran = f" (ran as {model.ran})" if model.ran else ""
    return {
        "model": model,
        "name": meta.get("model_name") or Path(path).stem,
        "path": str(path),
        "classes": meta.get("classes"),
        "input_size": size,
        "eval_resize": int(meta.get("eval_resize") or round(size / 0.875)),
        "mean": tuple(meta.get("mean", IMAGENET_MEAN)),
        "std": tuple(meta.get("std", IMAGENET_STD)),
        "bgr": meta.get("channel_order") == "BGR",
        "loaded": f"{meta.get('precision', 'fp32')} {model.runtime} file{ran}",
        "val_split": meta.get("val_split"),
        "seed": meta.get("seed") or 0,
        "reference": meta.get("source"),
    }


class ExportedModel(nn.Module):
    """An exported ``.onnx`` (ONNX Runtime) or ``.xml`` (OpenVINO) file, called like the PyTorch model: a float
    NCHW batch in, logits out (on the input's device). OpenVINO runs it under ``precision``'s hint (fp32 unless
    asked), so an INT8 file runs its quantised layers in int8 and the rest in fp32."""

    def __init__(
        self, path: str | Path, *, threads: int | None = None, device: str = "cpu", precision: str = "fp32"
    ) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"exported model {self.path} does not exist")
        threads = threads or torch.get_num_threads()
        if self.path.suffix.lower() == ".onnx":
            self.runtime = "onnxruntime"
            try:
                session = onnxruntime_session(self.path, threads, device)
            except Exception as error:  # onnxruntime's own exception types
                if isinstance(error, ValueError):
                    raise
                raise ValueError(f"ONNX Runtime cannot load {self.path}: {first_line(error)}") from None
            self._run = lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
            self.ran = None
        elif self.path.suffix.lower() == ".xml":
            if device != "cpu":
                raise ValueError(f"{self.path} is an OpenVINO model, which lightnets runs on the CPU; use --device cpu")
            self.runtime = "openvino"
            weights = self.path.with_suffix(".bin")
            if not weights.is_file():
                raise ValueError(
                    f"OpenVINO model {self.path} has no {weights.name} beside it (its weights); keep the files that "
                    "lightnets export wrote together, or export again"
                )
            try:
                compiled = openvino_compile(self.path, threads, precision)
            except Exception as error:
                raise ValueError(f"OpenVINO cannot load {self.path}: {first_line(error)}") from None
            if len(compiled.inputs) != 1 or not compiled.outputs:
                raise ValueError(
                    f"{self.path} is not a model lightnets exported: it has {len(compiled.inputs)} inputs and "
                    f"{len(compiled.outputs)} outputs, where an image classifier has one of each"
                )
            request = compiled.create_infer_request()
            self._run = lambda x: request.infer({0: x})[0]
            self.ran = openvino_ran(compiled)
        else:
            raise ValueError(f"{self.path} is not an exported model: expected {' or '.join(EXPORTED_SUFFIXES)}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().cpu().contiguous().numpy()
        # A copy: OpenVINO reuses its output buffer on the next call.
        return torch.from_numpy(np.array(self._run(array), dtype=np.float32)).to(images.device)
