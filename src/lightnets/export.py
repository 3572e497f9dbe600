"""Model export: ONNX checked against onnxruntime, and safetensors weights with a JSON sidecar.

``export_onnx`` writes one self-contained ``.onnx`` file with a dynamic batch axis (input ``images``,
output ``logits``), runs it in onnxruntime on CPU and refuses it if its outputs drift from PyTorch's.

``export_safetensors`` writes the state dict as ``.safetensors`` plus ``<stem>.json``, which names the model
and its kwargs so that ``load_safetensors_model`` can rebuild it with nothing else; ``load_weights_into``
loads a ``.safetensors`` file or a lightnets ``.pt`` checkpoint into a model that is already built.

onnx, onnxruntime and safetensors are optional (``pip install 'lightnets[export]'``) and imported on use.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightnets.models._helpers import load_weights, model_label, read_weights, weights_fit_report
from lightnets.models._safetensors import (
    check_names,
    first_line,
    read_safetensors,
    read_sidecar,
    require_module,
    sidecar_path,
)

__all__ = [
    "export_onnx",
    "export_safetensors",
    "load_safetensors_model",
    "load_weights_into",
    "sidecar_path",
]

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
# Sidecar keys written by export_safetensors itself; ``extra`` may not overwrite them.
_RESERVED_SIDECAR_KEYS = ("format", "model_name", "model_kwargs", "classes", "lightnets_version")
_SIDECAR_FORMAT = "lightnets-safetensors"


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------- ONNX


def _input_channels(model: nn.Module) -> int:
    # timm baselines may be built with in_chans != 3; the first conv says what the model eats.
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return 3


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        # Chosen on purpose (see export_onnx); its deprecation notice would only be noise for the user.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
        )


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    # A positional spec, so the forward argument may have any name.
    dynamic_shapes = ({0: torch.export.Dim("batch")},)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=dynamic_shapes,
        opset_version=opset,
        optimize=True,
        verbose=False,
    )
    program.save(str(path), external_data=False)


# TorchScript first: for these plain CNNs it gives the same graph as the dynamo exporter in a fraction of
# the time (about 0.5 s against 5 s per model here). Dynamo is the fallback for when TorchScript export is
# refused or, in a later torch, gone.
_EXPORTERS = (("torchscript", _export_torchscript), ("dynamo", _export_dynamo))


def _onnx_session(path: Path) -> Any:
    ort = require_module("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    # A check runs a few small batches; spin-waiting threads would only steal cores from everything else.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: int,
    *,
    opset: int = 18,
    check: bool = True,
    check_batch_sizes: tuple[int, ...] = (1, 4),
    rtol: float = 1e-4,
    metadata: dict[str, str] | None = None,
) -> dict:
    """Export ``model`` to one ``.onnx`` file with a dynamic batch axis, checked against onnxruntime.

    The model is exported as given (pass ``reparameterize_model(model)`` for the deploy form) in eval mode;
    its training flag is restored afterwards. A model that is not on the CPU is exported from a CPU copy.
    With ``check``, the file must pass ``onnx.checker`` and, at every batch size in ``check_batch_sizes``,
    onnxruntime's output on random input must match PyTorch's to ``max|diff| / max|torch| <= rtol``;
    otherwise a ValueError is raised and ``path`` is left as it was. The file replaces ``path`` atomically.
    ``metadata`` (str -> str) is stored in the file's ``metadata_props``, e.g. the preprocessing the weights expect.

    Returns ``{path, opset, input_size, max_abs_diff: {batch: float}, max_rel_diff: {batch: float},
    exporter, export_seconds}`` (the diff dicts are empty without ``check``).
    """
    onnx = require_module("onnx")
    path = Path(path)
    if input_size < 1:
        raise ValueError(f"input_size must be a positive number of pixels, got {input_size}")
    if check and not check_batch_sizes:
        raise ValueError("check_batch_sizes is empty; give at least one batch size or pass check=False")

    was_training = model.training
    source = model
    if any(t.device.type != "cpu" for t in [*model.parameters(), *model.buffers()]):
        # onnxruntime runs on the CPU, and the comparison must not pick up TF32 or GPU kernel differences.
        source = copy.deepcopy(model).cpu()
    source.eval()
    channels = _input_channels(source)
    generator = torch.Generator().manual_seed(0)
    # Batch 2, not 1: a size-1 dimension can be specialised into the graph as a constant.
    example = torch.randn(2, channels, input_size, input_size, generator=generator)

    result: dict[str, Any] = {"path": str(path), "opset": opset, "input_size": input_size}
    try:
        # A model that cannot run at this size would fail in every exporter, the slow fallback included.
        try:
            with torch.no_grad():
                source(example)
        except Exception as error:
            raise ValueError(
                f"{model_label(model)} does not run on a {tuple(example.shape)} input ({first_line(error)}); "
                "pick an input_size the model supports"
            ) from None
        with _atomic_path(path) as tmp:
            start = time.perf_counter()
            failures = []
            for exporter_name, exporter in _EXPORTERS:
                try:
                    exporter(source, example, tmp, opset)
                    break
                except Exception as error:
                    failures.append(f"{exporter_name}: {first_line(error)}")
            else:
                raise ValueError(f"ONNX export of {model_label(model)} failed ({'; '.join(failures)})")
            result["exporter"] = exporter_name
            result["export_seconds"] = round(time.perf_counter() - start, 3)
            if metadata:
                proto = onnx.load(str(tmp))
                for key, value in metadata.items():
                    proto.metadata_props.add(key=key, value=value)
                onnx.save(proto, str(tmp))
            result["max_abs_diff"], result["max_rel_diff"] = {}, {}
            if check:
                try:
                    # The path form also works for files past the 2 GB protobuf limit.
                    onnx.checker.check_model(str(tmp))
                except Exception as error:
                    raise ValueError(
                        f"exported ONNX for {model_label(model)} is invalid: {first_line(error)}"
                    ) from None
                _check_against_onnxruntime(source, tmp, path, channels, input_size, check_batch_sizes, rtol, result)
    finally:
        source.train(was_training)
    return result


def _check_against_onnxruntime(
    model: nn.Module,
    onnx_path: Path,
    final_path: Path,
    channels: int,
    input_size: int,
    batch_sizes: tuple[int, ...],
    rtol: float,
    result: dict[str, Any],
) -> None:
    session = _onnx_session(onnx_path)
    generator = torch.Generator().manual_seed(1)
    for batch in batch_sizes:
        images = torch.randn(batch, channels, input_size, input_size, generator=generator)
        with torch.no_grad():
            expected = model(images).float()
        try:
            (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
        except Exception as error:
            raise ValueError(f"onnxruntime could not run {final_path} at batch {batch}: {first_line(error)}") from None
        actual = torch.from_numpy(actual)
        if actual.shape != expected.shape:
            raise ValueError(
                f"onnxruntime output of {final_path} at batch {batch} has shape {tuple(actual.shape)}, "
                f"PyTorch's has {tuple(expected.shape)}"
            )
        max_abs = (actual - expected).abs().max().item()
        scale = expected.abs().max().item()
        max_rel = max_abs / scale if scale > 0 else max_abs
        result["max_abs_diff"][batch] = max_abs
        result["max_rel_diff"][batch] = max_rel
        # Written so that a NaN difference fails too.
        if not max_rel <= rtol:
            raise ValueError(
                f"ONNX check failed for {final_path} at batch {batch}: max abs diff {max_abs:.3g}, "
                f"relative to max |output| {scale:.3g} is {max_rel:.3g} > rtol {rtol:.3g}; "
                "the file was not written"
            )


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
    with _atomic_path(path) as tmp:
        safetensors_torch.save_file(tensors, str(tmp), metadata=metadata)
    with _atomic_path(sidecar_path(path)) as tmp:
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
