"""Weights as safetensors with a JSON sidecar that names the model, and loading them (or any weights) back.

``export_safetensors`` writes the state dict as ``.safetensors`` plus ``<stem>.json``, which names the model
and its kwargs so that ``load_safetensors_model`` can rebuild it with nothing else; ``load_weights_into``
loads a ``.safetensors`` file or a lightnets ``.pt`` checkpoint into a model that is already built. Reading
sits in the model layer (:mod:`lightnets.models.safetensors_io`), so ``create_model(checkpoint=)`` needs none of
this. safetensors is optional (``pip install 'lightnets[export]'``) and imported on use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightnets.files import atomic_path
from lightnets.models.errors import require_module
from lightnets.models.safetensors_io import check_names, read_safetensors, read_sidecar, sidecar_path
from lightnets.models.weights import load_weights, model_label, read_weights, weights_fit_report
from lightnets.version import __version__

__all__ = ["export_safetensors", "load_safetensors_model", "load_weights_into", "sidecar_path"]

# Sidecar keys written by export_safetensors itself; ``extra`` may not overwrite them.
_RESERVED_SIDECAR_KEYS = ("format", "model_name", "model_kwargs", "classes", "lightnets_version")
_SIDECAR_FORMAT = "lightnets-safetensors"


def _jsonable(value: Any, where: str) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(item, where) for item in value]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise ValueError(f"{where} has non-string keys; only JSON-serialisable kwargs can be exported")
        return {key: _jsonable(item, f"{where}[{key!r}]") for key, item in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(
        f"{where} is a {type(value).__name__}, which JSON cannot hold; pass plain numbers, strings, lists or dicts"
    )


def _tensors_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors, each with its own storage (safetensors refuses shared ones)."""
    tensors: dict[str, torch.Tensor] = {}
    seen_storages: set[tuple[int, int]] = set()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        # Tied weights or views of one buffer: give each name its own copy; loading writes the same values
        # into the shared storage once per name, which is harmless.
        if key in seen_storages and tensor.numel() > 0:
            tensor = tensor.clone()
        else:
            seen_storages.add(key)
            tensor = tensor.contiguous()
            if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
                # A contiguous view into a larger storage; safetensors would write the whole storage.
                tensor = tensor.clone()
        tensors[name] = tensor
    return tensors


def export_safetensors(
    model: nn.Module,
    path: str | Path,
    *,
    model_name: str,
    model_kwargs: dict,
    classes: list[str] | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``model``'s state dict to ``path`` as safetensors, plus a JSON sidecar (see :func:`sidecar_path`).

    The sidecar holds ``model_name``, ``model_kwargs`` (tuples become lists; ``num_classes`` is added from
    the model when missing), ``classes``, the lightnets version and every key of ``extra``, e.g.
    ``{"deploy": True}`` for a model passed through ``reparameterize_model`` (needed to load it back),
    ``input_size``, ``mean``, ``std``. Both files are replaced atomically. Returns the weights path.
    """
    safetensors_torch = require_module("safetensors.torch")
    path = Path(path)
    built_as = getattr(model, "model_name", None)
    if built_as and built_as != model_name:
        raise ValueError(f"model_name {model_name!r} does not match the model, which was built as {built_as!r}")
    extra = dict(extra or {})
    clashes = sorted(set(extra) & set(_RESERVED_SIDECAR_KEYS))
    if clashes:
        raise ValueError(f"extra may not set {', '.join(clashes)}; pass them as arguments of export_safetensors")
    if "deploy" in extra and not isinstance(extra["deploy"], bool):
        raise ValueError(f"extra['deploy'] must be True or False, got {extra['deploy']!r}")
    kwargs = dict(model_kwargs)
    if "num_classes" not in kwargs and isinstance(getattr(model, "num_classes", None), int):
        # Without it a rebuilt model would get the form's default head and the weights would not fit.
        kwargs["num_classes"] = model.num_classes

    sidecar = {
        "format": _SIDECAR_FORMAT,
        "model_name": model_name,
        "model_kwargs": _jsonable(kwargs, "model_kwargs"),
        "classes": _jsonable(list(classes), "classes") if classes is not None else None,
        "lightnets_version": __version__,
        **_jsonable(extra, "extra"),
    }
    # safetensors metadata must be str -> str.
    metadata = {
        "format": "pt",
        "model_name": model_name,
        "deploy": "true" if extra.get("deploy") else "false",
        "lightnets_version": __version__,
    }
    tensors = _tensors_for_saving(model)
    with atomic_path(path) as tmp:
        safetensors_torch.save_file(tensors, str(tmp), metadata=metadata)
    with atomic_path(sidecar_path(path)) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
    return path


def _load_strict(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path, hint: str = "") -> None:
    problem = weights_fit_report(model, tensors)
    if problem:
        raise ValueError(f"weights in {path} do not fit model {model_label(model)}: {problem}{hint}")
    model.load_state_dict(tensors, strict=True)


def load_safetensors_model(path: str | Path) -> nn.Module:
    """Rebuild the model that :func:`export_safetensors` wrote to ``path``, in eval mode.

    The sidecar gives the model name and kwargs; a deploy-form export (``deploy: true``) is rebuilt through
    ``reparameterize_model`` before its weights are loaded. ``classes`` is attached as ``model.classes``.
    """
    from lightnets.models import create_model, reparameterize_model

    path = Path(path)
    sidecar = read_sidecar(path)
    tensors, metadata = read_safetensors(path)
    check_names(
        path,
        (f"sidecar {sidecar_path(path).name}", sidecar["model_name"]),
        ("its metadata", metadata.get("model_name")),
    )
    model = create_model(sidecar["model_name"], **sidecar.get("model_kwargs", {}))
    deploy = bool(sidecar.get("deploy", False))
    if deploy:
        model = reparameterize_model(model)
    hint = "" if deploy else '; if it was exported in deploy form, its sidecar needs "deploy": true'
    _load_strict(model, tensors, path, hint)
    if sidecar.get("classes") is not None:
        model.classes = list(sidecar["classes"])
    return model.eval()


def load_weights_into(model: nn.Module, path: str | Path, *, ema: bool = False) -> nn.Module:
    """Load a ``.safetensors`` export, a lightnets ``.pt`` checkpoint (or run directory), or an authors'
    checkpoint into ``model``.

    The file's model name must match ``model.model_name`` when that is set. Loading is strict. A deploy-form
    safetensors export into a training-form model returns the model's deploy form (a new module, eval mode);
    otherwise ``model`` itself is returned with its training flag unchanged. ``classes`` is attached when the
    file has them. An authors' file is converted by the ``checkpoint_filter_fn`` of the model's family, and
    ``ema`` picks its EMA weights.
    """
    return load_weights(model, read_weights(path, ema=ema))
