"""Where a training step's time goes: forward and backward time per layer type, with its GMAC/s.

``lightnets summary NAME --profile train`` runs a few optimisation steps (random uint8 batch, forward, loss,
backward, SGD) under :mod:`torch.profiler` and sorts the time of every operator into layer types: convolutions by
their shape (dense, pointwise 1x1, grouped, depthwise, per kernel size), linear layers, batch norm, activations,
pooling, the copies that concatenation and channel shuffles make, element-wise adds and multiplies, the loss and the
optimizer step. Convolutions and linear layers also get their MACs, from the shapes and arguments the profiler
records, so each row shows how fast that kind of layer runs on this machine against the machine's peak.

An operator's time is counted once, at the outermost operator of a known kind (``aten::convolution`` includes the
oneDNN kernel under it); what no known kind covers is "other". Backward is what runs under the autograd engine.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lightnets.tables import format_table

__all__ = ["TrainingProfile", "print_training_profile", "profile_training"]

# The outermost aten operator of each layer kind, forward and backward.
_KINDS = {
    "batch norm": ("aten::batch_norm", "aten::native_batch_norm", "aten::native_batch_norm_backward",
                   "aten::_native_batch_norm_legit", "aten::_batch_norm_with_update"),
    "activation": ("aten::relu", "aten::relu_", "aten::threshold_backward", "aten::hardswish", "aten::hardswish_",
                   "aten::hardswish_backward", "aten::hardsigmoid", "aten::hardsigmoid_", "aten::hardsigmoid_backward",
                   "aten::sigmoid", "aten::sigmoid_backward", "aten::silu", "aten::silu_", "aten::silu_backward",
                   "aten::prelu", "aten::_prelu_kernel", "aten::_prelu_kernel_backward", "aten::gelu",
                   "aten::gelu_backward", "aten::relu6", "aten::hardtanh", "aten::hardtanh_",
                   "aten::hardtanh_backward"),
    "pooling": ("aten::adaptive_avg_pool2d", "aten::avg_pool2d", "aten::avg_pool2d_backward", "aten::max_pool2d",
                "aten::max_pool2d_with_indices", "aten::max_pool2d_with_indices_backward", "aten::mean",
                "aten::_adaptive_avg_pool2d_backward", "aten::flatten"),
    "concat, shuffle and copies": ("aten::cat", "aten::contiguous", "aten::clone", "aten::copy_", "aten::transpose",
                                   "aten::reshape", "aten::view", "aten::permute", "aten::chunk", "aten::split",
                                   "aten::narrow", "aten::slice", "aten::channel_shuffle",
                                   "aten::native_channel_shuffle", "aten::to", "aten::_to_copy"),
    "element-wise add and multiply": ("aten::add", "aten::add_", "aten::mul", "aten::mul_", "aten::sub", "aten::div"),
    "loss": ("aten::cross_entropy_loss", "aten::log_softmax", "aten::_log_softmax_backward_data",
             "aten::nll_loss_backward", "aten::nll_loss_nd"),
}  # fmt: skip
_KIND_OF = {op: kind for kind, ops in _KINDS.items() for op in ops}
_BACKWARD = "autograd::engine::evaluate_function"
_OPTIMIZER = "Optimizer.step"
FORWARD, BACKWARD, UPDATE = "forward", "backward", "update"


def _conv_kind(weight: list[int], groups: int, channels_in: int) -> str:
    kernel = "x".join(str(k) for k in weight[2:])
    if groups == 1:
        return "pointwise conv 1x1" if kernel == "1x1" else f"dense conv {kernel}"
    if weight[1] == 1 and groups == channels_in:
        return f"depthwise conv {kernel}"
    return f"grouped conv {kernel}"


def _conv(event: Any) -> tuple[str, int]:
    """The kind of a convolution event and its MACs, from the shapes and the scalar arguments recorded."""
    shapes, args = event.input_shapes, event.concrete_inputs
    if event.name == "aten::convolution":  # (input, weight, bias, stride, padding, dilation, ..., groups)
        x, weight = shapes[0], shapes[1]
        stride, padding, dilation, groups = args[3], args[4], args[5], args[8]
        out = [(size + 2 * p - d * (k - 1) - 1) // s + 1
               for size, k, s, p, d in zip(x[2:], weight[2:], stride, padding, dilation)]  # fmt: skip
        macs = x[0] * weight[0] * math.prod(out) * weight[1] * math.prod(weight[2:])
    else:  # convolution_backward(grad_output, input, weight, ..., groups, output_mask): grad input and grad weight
        grad_out, x, weight = shapes[0], shapes[1], shapes[2]
        groups, mask = args[9], args[10]
        forward_macs = grad_out[0] * grad_out[1] * math.prod(grad_out[2:]) * weight[1] * math.prod(weight[2:])
        macs = forward_macs * (int(bool(mask[0])) + int(bool(mask[1])))
    return _conv_kind(weight, int(groups), x[1]), macs


def _linear_macs(event: Any) -> int:
    shapes = event.input_shapes
    if event.name == "aten::linear":  # (input, weight, bias)
        return math.prod(shapes[0][:-1]) * shapes[1][0] * shapes[1][1]
    if event.name == "aten::addmm":  # (bias, a, b)
        return shapes[1][0] * shapes[1][1] * shapes[2][1]
    return shapes[0][0] * shapes[0][1] * shapes[1][1]  # mm(a, b)


def _classify(event: Any) -> tuple[str, int] | None:
    name = event.name
    if name in ("aten::convolution", "aten::convolution_backward"):
        return _conv(event)
    if name in ("aten::linear", "aten::addmm", "aten::mm"):
        return "linear", _linear_macs(event)
    kind = _KIND_OF.get(name)
    return (kind, 0) if kind else None


@dataclass
class ProfileRow:
    kind: str
    forward_ms: float = 0.0  # per step
    backward_ms: float = 0.0
    update_ms: float = 0.0  # the optimizer step
    macs: int = 0  # per step, forward and backward

    @property
    def total_ms(self) -> float:
        return self.forward_ms + self.backward_ms + self.update_ms


@dataclass
class TrainingProfile:
    name: str
    batch: int
    input_size: int
    device: str
    settings: str
    steps: int
    step_ms: float  # wall time per step, outside the profiler
    rows: list[ProfileRow] = field(default_factory=list)
    peak_gmacs: float | None = None
    peak_formula: str = ""

    def format(self, markdown: bool = False) -> str:
        profiled = sum(row.total_ms for row in self.rows) or 1.0
        headers = ["layer type", "forward ms", "backward ms", "update ms", "share", "GMAC/step", "GMAC/s"]
        if self.peak_gmacs:
            headers.append("of peak")
        table = []
        for row in self.rows:
            rate = row.macs / 1e9 / (row.total_ms / 1e3) if row.macs and row.total_ms else None
            cells = [row.kind, f"{row.forward_ms:.1f}", f"{row.backward_ms:.1f}", f"{row.update_ms:.1f}",
                     f"{100 * row.total_ms / profiled:.1f}%", f"{row.macs / 1e9:.3f}" if row.macs else "-",
                     f"{rate:.1f}" if rate else "-"]  # fmt: skip
            if self.peak_gmacs:
                cells.append(f"{100 * rate / self.peak_gmacs:.0f}%" if rate else "-")
            table.append(cells)
        lines = [
            f"{self.name}: training step at batch {self.batch}, input {self.input_size}, on {self.device} "
            f"({self.settings}); {self.steps} profiled steps, {self.step_ms:.0f} ms a step unprofiled "
            f"({1e3 * self.batch / self.step_ms:.0f} img/s)",
            format_table(headers, table, markdown=markdown),
        ]
        if self.peak_gmacs:
            lines.append(f"peak: {self.peak_formula}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """The profiler's C++ side writes its start and stop notices (and, on a machine without a GPU, a failed GPU
    count) straight to file descriptor 2; they say nothing to the user. Python's own errors are raised after the
    descriptor is restored, so none is hidden."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _walk(events: list[Any], device_time: bool) -> dict[tuple[str, str], list[float]]:
    """(kind, phase) -> [microseconds, MACs], each operator counted at its outermost known kind."""
    totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])

    def time_of(event: Any, inclusive: bool) -> float:
        if device_time:
            return event.device_time_total if inclusive else event.self_device_time_total
        return event.cpu_time_total if inclusive else event.self_cpu_time_total

    def visit(event: Any, phase: str) -> None:
        if event.name.startswith(_BACKWARD):
            phase = BACKWARD
        elif event.name.startswith(_OPTIMIZER):
            phase = UPDATE
        known = _classify(event) if phase != UPDATE else None
        if known is not None:
            kind, macs = known
            totals[(kind, phase)][0] += time_of(event, inclusive=True)
            totals[(kind, phase)][1] += macs
            return
        totals[("optimizer step" if phase == UPDATE else "other", phase)][0] += time_of(event, inclusive=False)
        for child in event.cpu_children:
            visit(child, phase)

    for event in events:
        if event.cpu_parent is None:
            visit(event, FORWARD)
    return totals


def profile_training(
    model: nn.Module,
    *,
    name: str,
    batch: int = 64,
    input_size: int | None = None,
    steps: int = 5,
    warmup: int = 2,
    channels_last: bool = False,
    amp: bool = False,
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
) -> TrainingProfile:
    """Profile ``steps`` training steps of ``model`` (after ``warmup`` unprofiled ones) and sort the time by layer
    type. The model's weights change (it trains on a random batch): pass a copy to keep the original."""
    from torch.profiler import ProfilerActivity, profile

    from lightnets.device import autocast_context, cpu_fp32_peak, device_name

    device = torch.device(device)
    input_size = input_size or int(getattr(model, "default_input_size", 224))
    num_classes = num_classes or int(getattr(model, "num_classes", 1000))
    model = model.to(device).train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    images = torch.randn(batch, 3, input_size, input_size, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, num_classes, (batch,), device=device)
    criterion = nn.CrossEntropyLoss()

    def step() -> None:
        with autocast_context(device, amp, torch.bfloat16):
            loss = criterion(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    begin = time.perf_counter()
    for _ in range(steps):
        step()
    step_ms = (time.perf_counter() - begin) * 1e3 / steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with _native_stderr_silenced(), profile(activities=activities, record_shapes=True) as prof:
        for _ in range(steps):
            step()
    totals = _walk(list(prof.events()), device_time=device.type == "cuda")
    rows: dict[str, ProfileRow] = {}
    for (kind, phase), (micros, macs) in totals.items():
        row = rows.setdefault(kind, ProfileRow(kind))
        column = {FORWARD: "forward_ms", BACKWARD: "backward_ms", UPDATE: "update_ms"}[phase]
        setattr(row, column, getattr(row, column) + micros / 1e3 / steps)
        row.macs += int(macs / steps)
    ordered = sorted(rows.values(), key=lambda row: -row.total_ms)
    settings = ", ".join([memory_format_name(channels_last), "bf16 autocast" if amp else "fp32", "eager"])
    peak = cpu_fp32_peak() if device.type == "cpu" else None
    return TrainingProfile(
        name, batch, input_size, device_name(device), settings, steps, step_ms, ordered,
        peak_gmacs=peak[0] if peak else None, peak_formula=peak[1] if peak else "",
    )  # fmt: skip


def memory_format_name(channels_last: bool) -> str:
    return "channels-last" if channels_last else "contiguous"


def print_training_profile(
    name: str, batch: int, input_size: int | None, steps: int, channels_last: bool, amp: bool, device: str,
    model_kwargs: dict[str, Any] | None = None, markdown: bool = False,
) -> TrainingProfile:  # fmt: skip
    """``lightnets summary NAME --profile train``."""
    from lightnets.models import create_model

    model = create_model(name, **(model_kwargs or {}))
    result = profile_training(
        model, name=name, batch=batch, input_size=input_size, steps=steps, channels_last=channels_last, amp=amp,
        device=device,
    )  # fmt: skip
    print(result.format(markdown=markdown))
    return result
