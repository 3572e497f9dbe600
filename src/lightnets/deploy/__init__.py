"""Deploying a trained model: ONNX and OpenVINO files (fp32 or calibrated INT8), safetensors weights, and the
sessions that run exported files in their runtime (ONNX Runtime, OpenVINO) as ``eval`` and ``predict`` use them."""

from lightnets.deploy.export import export_model
from lightnets.deploy.onnx import export_onnx
from lightnets.deploy.safetensors import export_safetensors, load_safetensors_model, load_weights_into
from lightnets.deploy.sessions import ExportedModel, is_exported_file

__all__ = [
    "ExportedModel",
    "export_model",
    "export_onnx",
    "export_safetensors",
    "is_exported_file",
    "load_safetensors_model",
    "load_weights_into",
]
