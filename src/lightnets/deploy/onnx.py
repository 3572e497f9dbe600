"""ONNX export: one self-contained ``.onnx`` file with a dynamic batch axis (input ``images``, output ``logits``, or
``features.0``, ``features.1``, ... for a model that returns a list of feature maps, e.g. ``features_only=True``),
run in onnxruntime on CPU and refused if any of its outputs drifts from PyTorch's.

onnx and onnxruntime are optional (``pip install 'lightnets[export]'``) and imported on use.
"""

from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightnets.files import atomic_path
from lightnets.models.errors import first_line, require_module
from lightnets.models.weights import model_label

__all__ = ["FEATURES_NAME", "INPUT_NAME", "OUTPUT_NAME", "export_onnx", "fold_reshape_shapes", "output_names"]

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
FEATURES_NAME = "features"  # outputs features.0, features.1, ... of a model returning a list


def output_names(output: torch.Tensor | list | tuple, model_label: str = "the model") -> list[str]:
    """The ONNX output names for what the model returned: ``logits``, or ``features.I`` for the I-th list entry."""
    if isinstance(output, torch.Tensor):
        return [OUTPUT_NAME]
    if isinstance(output, (list, tuple)) and output and all(isinstance(t, torch.Tensor) for t in output):
        return [f"{FEATURES_NAME}.{i}" for i in range(len(output))]
    raise ValueError(f"{model_label} returns {type(output).__name__}; ONNX export takes a tensor or a list of tensors")


def _as_list(output: torch.Tensor | list | tuple) -> list[torch.Tensor]:
    return [output] if isinstance(output, torch.Tensor) else list(output)


def _input_channels(model: nn.Module) -> int:
    # timm baselines may be built with in_chans != 3; the first conv says what the model eats.
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return 3


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, opset: int, outputs: list[str]) -> None:
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
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]},
            opset_version=opset,
            do_constant_folding=True,
        )


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path, opset: int, outputs: list[str]) -> None:
    # A positional spec, so the forward argument may have any name.
    dynamic_shapes = ({0: torch.export.Dim("batch")},)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=outputs,
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


def fold_reshape_shapes(proto: Any, channels: int, input_size: int) -> int:
    """Give every Reshape whose target shape is computed at run time a constant target shape; returns how many.

    With a dynamic batch axis the exporter builds a reshape's target from ``Shape``/``Slice``/``Concat`` of its
    input, and ONNX Runtime's symbolic shape inference (``quant_pre_process``) cannot tell that target's rank
    (it stops on ``assert is_literal(shape_rank)``). The targets are read by running the graph at batch 2 and 3:
    the output's one dimension that follows the batch becomes -1, the others their sizes. A target with any other
    dependence on the input is left as it was. The nodes that only computed targets are then removed.
    """
    onnx = require_module("onnx")
    ort = require_module("onnxruntime")
    graph = proto.graph
    if any(
        attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for attr in n.attribute
    ):
        return 0  # control flow: the pruning below does not look into subgraphs
    constant = {init.name for init in graph.initializer}
    constant |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    targets = [node for node in graph.node if node.op_type == "Reshape" and node.input[1] not in constant]
    if not targets:
        return 0
    # The reshapes' outputs, not their computed targets: a target may hold -1 or 0 entries of its own.
    probe = copy.deepcopy(proto)
    probe.graph.output.extend(onnx.ValueInfoProto(name=node.output[0]) for node in targets)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [node.output[0] for node in targets]
    shapes = []
    for batch in (2, 3):
        feed = {graph.input[0].name: torch.zeros(batch, channels, input_size, input_size).numpy()}
        shapes.append([value.shape for value in session.run(names, feed)])
    folded = 0
    for index, (node, at2, at3) in enumerate(zip(targets, *shapes)):
        varying = [i for i, (a, b) in enumerate(zip(at2, at3)) if a != b]
        if len(at2) != len(at3) or len(varying) != 1:
            continue
        static = list(at2)
        static[varying[0]] = -1
        name = f"lightnets_static_shape_{index}"
        graph.initializer.append(onnx.numpy_helper.from_array(torch.tensor(static).numpy(), name))
        node.input[1] = name
        folded += 1
    _remove_dead_nodes(graph)
    return folded


def _remove_dead_nodes(graph: Any) -> None:
    needed = {out.name for out in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    unused = [init for init in graph.initializer if init.name not in needed]
    for init in unused:
        graph.initializer.remove(init)
    stale = [info for info in graph.value_info if info.name not in needed]
    for info in stale:
        graph.value_info.remove(info)


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
    onnxruntime's outputs on random input must match PyTorch's to ``max|diff| / max|torch| <= rtol`` (each output
    against its own scale; a model returning a list of feature maps exports them as ``features.0``, ...);
    otherwise a ValueError is raised and ``path`` is left as it was. The file replaces ``path`` atomically.
    ``metadata`` (str -> str) is stored in the file's ``metadata_props``, e.g. the preprocessing the weights expect.

    Reshapes whose target shape the exporter computes at run time (channel shuffle, ParNet's stack-and-flatten)
    get constant target shapes (:func:`fold_reshape_shapes`), which quantisation tools need.

    Returns ``{path, opset, input_size, outputs, max_abs_diff: {batch: float}, max_rel_diff: {batch: float},
    exporter, export_seconds, static_reshapes}``: the output names, and the largest difference over them at each
    batch size (the diff dicts are empty without ``check``).
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
    outputs: list[str] = []
    try:
        # A model that cannot run at this size would fail in every exporter, the slow fallback included.
        try:
            with torch.no_grad():
                outputs = output_names(source(example), model_label(model))
        except ValueError:
            raise
        except Exception as error:
            raise ValueError(
                f"{model_label(model)} does not run on a {tuple(example.shape)} input ({first_line(error)}); "
                "pick an input_size the model supports"
            ) from None
        with atomic_path(path) as tmp:
            start = time.perf_counter()
            failures = []
            for exporter_name, exporter in _EXPORTERS:
                try:
                    exporter(source, example, tmp, opset, outputs)
                    break
                except Exception as error:
                    failures.append(f"{exporter_name}: {first_line(error)}")
            else:
                raise ValueError(f"ONNX export of {model_label(model)} failed ({'; '.join(failures)})")
            result["exporter"], result["outputs"] = exporter_name, outputs
            result["export_seconds"] = round(time.perf_counter() - start, 3)
            proto = onnx.load(str(tmp))
            result["static_reshapes"] = fold_reshape_shapes(proto, channels, input_size)
            for key, value in (metadata or {}).items():
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
                _check_against_onnxruntime(
                    source, tmp, path, channels, input_size, check_batch_sizes, rtol, outputs, result
                )
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
    outputs: list[str],
    result: dict[str, Any],
) -> None:
    session = _onnx_session(onnx_path)
    generator = torch.Generator().manual_seed(1)
    for batch in batch_sizes:
        images = torch.randn(batch, channels, input_size, input_size, generator=generator)
        with torch.no_grad():
            expected_all = [t.float() for t in _as_list(model(images))]
        try:
            actual_all = session.run(outputs, {INPUT_NAME: images.numpy()})
        except Exception as error:
            raise ValueError(f"onnxruntime could not run {final_path} at batch {batch}: {first_line(error)}") from None
        result["max_abs_diff"][batch] = result["max_rel_diff"][batch] = 0.0
        for name, actual, expected in zip(outputs, actual_all, expected_all):
            _compare(name, torch.from_numpy(actual), expected, final_path, batch, rtol, result)


def _compare(
    name: str,
    actual: torch.Tensor,
    expected: torch.Tensor,
    final_path: Path,
    batch: int,
    rtol: float,
    result: dict[str, Any],
) -> None:
    """One output against PyTorch's; the batch's entries in ``result`` keep the largest difference so far."""
    which = "" if name == OUTPUT_NAME else f", output {name}"
    if actual.shape != expected.shape:
        raise ValueError(
            f"onnxruntime output of {final_path} at batch {batch}{which} has shape {tuple(actual.shape)}, "
            f"PyTorch's has {tuple(expected.shape)}"
        )
    max_abs = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    max_rel = max_abs / scale if scale > 0 else max_abs
    # max() would drop a NaN; a NaN difference must reach the check below and fail it.
    for key, value in (("max_abs_diff", max_abs), ("max_rel_diff", max_rel)):
        if not value <= result[key][batch]:
            result[key][batch] = value
    # Written so that a NaN difference fails too.
    if not max_rel <= rtol:
        raise ValueError(
            f"ONNX check failed for {final_path} at batch {batch}{which}: max abs diff {max_abs:.3g}, "
            f"relative to max |output| {scale:.3g} is {max_rel:.3g} > rtol {rtol:.3g}; "
            "the file was not written"
        )
