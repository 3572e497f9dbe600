"""Reading lightnets' safetensors exports: the weights, their metadata and the JSON sidecar that names the model.

Writing them is ``lightnets.deploy.export_safetensors``; reading sits in the model layer so that
``create_model(name, checkpoint=PATH)`` needs nothing else. safetensors is optional and imported on use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lightnets.models.errors import first_line, require_module

__all__ = [
    "check_names",
    "is_safetensors",
    "read_safetensors",
    "read_sidecar",
    "sidecar_path",
]


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar of a weights file: ``w.safetensors`` -> ``w.json``, any other ``w.ext`` -> ``w.ext.json``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return path.with_suffix(".json")
    return path.with_name(path.name + ".json")


def is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    if path.suffix in (".pt", ".pth", ".tar", ".mdl") or not path.is_file():
        return False
    # A safetensors file starts with an 8-byte header length and then the JSON header itself.
    with path.open("rb") as handle:
        return handle.read(9)[8:] == b"{"


def read_sidecar(path: Path) -> dict[str, Any]:
    side = sidecar_path(path)
    if not path.is_file():
        raise ValueError(f"weights file {path} does not exist")
    if not side.is_file():
        raise ValueError(
            f"{path} has no sidecar {side.name}; it holds the model name and kwargs, so export with "
            "lightnets.deploy.export_safetensors or load the weights into a built model with load_weights_into"
        )
    try:
        sidecar = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"sidecar {side} is not readable JSON: {first_line(error)}") from None
    if not isinstance(sidecar, dict) or not isinstance(sidecar.get("model_name"), str):
        raise ValueError(f"sidecar {side} lacks a model_name; re-export with lightnets.deploy.export_safetensors")
    if not isinstance(sidecar.get("model_kwargs", {}), dict):
        raise ValueError(f"sidecar {side} has model_kwargs that are not a JSON object")
    return sidecar


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    safetensors = require_module("safetensors")
    safetensors_torch = require_module("safetensors.torch")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = safetensors_torch.load_file(str(path))
    except Exception as error:
        raise ValueError(f"{path} is not a readable safetensors file: {first_line(error)}") from None
    return tensors, metadata


def check_names(path: Path, *names: tuple[str, str | None]) -> None:
    """Every (where, name) pair that is set must name the same model."""
    known = [(where, name) for where, name in names if name]
    for where, name in known[1:]:
        if name != known[0][1]:
            raise ValueError(
                f"{path}: {known[0][0]} says model {known[0][1]!r} but {where} says {name!r}; "
                "use the weights with the model they were exported from"
            )
