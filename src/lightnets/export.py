"""Model export: ``lightnets export`` (:func:`export_model`), and safetensors weights with a JSON sidecar.

ONNX export, checked against onnxruntime, is :mod:`lightnets.onnx_export` (``export_onnx``, re-exported here).

``export_safetensors`` writes the state dict as ``.safetensors`` plus ``<stem>.json``, which names the model
and its kwargs so that ``load_safetensors_model`` can rebuild it with nothing else; ``load_weights_into``
loads a ``.safetensors`` file or a lightnets ``.pt`` checkpoint into a model that is already built.

onnx, onnxruntime and safetensors are optional (``pip install 'lightnets[export]'``) and imported on use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightnets.files import atomic_path, check_writable
from lightnets.models._helpers import PRETRAINED_CFG_KEYS, load_weights, model_label, read_weights, weights_fit_report
from lightnets.models._safetensors import (
    check_names,
    read_safetensors,
    read_sidecar,
    require_module,
    sidecar_path,
)
from lightnets.onnx_export import export_onnx

__all__ = [
    "export_model",
    "export_onnx",
    "export_safetensors",
    "load_safetensors_model",
    "load_weights_into",
    "preprocessing_of",
    "sidecar_path",
]

# Sidecar keys written by export_safetensors itself; ``extra`` may not overwrite them.
_RESERVED_SIDECAR_KEYS = ("format", "model_name", "model_kwargs", "classes", "lightnets_version")
_SIDECAR_FORMAT = "lightnets-safetensors"


# -------------------------------------------------------------------------------------------- safetensors


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
    from lightnets import __version__

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


def preprocessing_of(model: nn.Module, input_size: int | None = None) -> dict[str, Any]:
    """The inputs ``model``'s weights expect: input size, resize, mean, std, channel order (its ``pretrained_cfg``,
    which a lightnets checkpoint fills from its training data, else lightnets' ImageNet defaults)."""
    from lightnets.data import IMAGENET_MEAN, IMAGENET_STD

    cfg = getattr(model, "pretrained_cfg", {})
    size = int(input_size or cfg.get("input_size") or getattr(model, "default_input_size", 224))
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
) -> Path:
    """``lightnets export``: the model of ``checkpoint`` (or ``model_name``, untrained) as ONNX, OpenVINO IR or
    safetensors; ONNX and OpenVINO in fp32 or, calibrated on ``calibration_data``'s training images, INT8.

    A file that names its model needs no ``model_name``; the authors' files do. The inputs the weights expect (the
    authors' mean, std and channel order) are recorded in the ONNX metadata, the OpenVINO sidecar or the
    safetensors sidecar. ``deploy`` defaults to the deploy form for OpenVINO and INT8, the form they are run in.
    """
    from lightnets.models import create_model, reparameterize_model

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
    if precision != "int8" and (calibration_data or calibration_images):
        raise ValueError("--calibration-data and --calibration-images are for --precision int8")
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
        from lightnets.runtime_export import export_for_runtime
        from lightnets.runtimes import META_KEY

        inputs = preprocessing_of(model, input_size)
        extra = weights.extra if weights is not None else {}
        meta = {
            "format": "lightnets-export",
            "model_name": model_name,
            "classes": list(classes) if classes is not None else None,
            **inputs,
            "precision": precision,
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
