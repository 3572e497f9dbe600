"""A per-module table of a model: output shape, parameters and MACs of every module at a chosen depth.

``lightnets.summary(model, input_size)`` and ``lightnets summary NAME``. The counting is
:mod:`lightnets.measure.counting`'s (:func:`~lightnets.measure.counting.count_macs_by_module`: FlopCounterMode
FLOPs / 2 of convolutions and linear layers, batch 1, eval mode), read per module from the same pass, with forward
hooks recording each module's output shape; so the totals are ``lightnets models``' numbers by construction, and the
rows add up to them (a last row holds whatever lies outside the listed modules, when anything does). No torchinfo.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from lightnets.measure.counting import count_macs_by_module, count_params
from lightnets.tables import format_table

__all__ = ["ModelSummary", "SummaryRow", "print_model_summary", "summary"]

OUTSIDE = "(outside the modules above)"


@dataclass(frozen=True)
class SummaryRow:
    module: str  # qualified name
    kind: str  # class name
    output_shape: str  # e.g. "1x24x32x32"; "-" for a module the forward pass never called
    params: int
    macs: int


@dataclass
class ModelSummary:
    name: str
    input_size: int
    in_chans: int
    depth: int
    rows: list[SummaryRow] = field(default_factory=list)
    total_params: int = 0
    total_macs: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self, markdown: bool = False) -> str:
        headers = ["module", "type", "output shape", "params", "MACs"]
        rows = [[r.module, r.kind, r.output_shape, f"{r.params:,}", f"{r.macs:,}"] for r in self.rows]
        rows.append(["total", "", "", f"{self.total_params:,}", f"{self.total_macs:,}"])
        lines = [
            f"{self.name}: input 1x{self.in_chans}x{self.input_size}x{self.input_size} (batch 1, eval mode), "
            f"modules at depth {self.depth}",
            format_table(headers, rows, markdown=markdown),
            # The units and rounding of `lightnets models`, so the two can be read side by side.
            f"params {self.total_params / 1e6:.3f} M, MACs {self.total_macs / 1e6:.1f} M",
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _shape_of(output: Any) -> str:
    if isinstance(output, torch.Tensor):
        return "x".join(str(size) for size in output.shape)
    if isinstance(output, (list, tuple)):
        return ", ".join(_shape_of(item) for item in output)
    return type(output).__name__


def _depth(name: str) -> int:
    return name.count(".") + 1


def _rows_at(model: nn.Module, depth: int, called: set[str]) -> list[tuple[str, nn.Module]]:
    """The modules that make the rows: each called module at ``depth``, or above it when nothing inside it was
    called. A container that is never called itself (a ModuleList) is looked through, since FlopCounterMode credits
    only the modules that run; a module neither called nor holding called ones is a row of its parameters."""
    with_called_inside = {name.rsplit(".", i)[0] for name in called for i in range(1, name.count(".") + 1)}
    rows = []

    def visit(prefix: str, module: nn.Module) -> None:
        for child_name, child in module.named_children():
            qualified = f"{prefix}.{child_name}" if prefix else child_name
            if qualified in with_called_inside and not (qualified in called and _depth(qualified) >= depth):
                visit(qualified, child)
            else:
                rows.append((qualified, child))

    visit("", model)
    return rows


def summary(
    model: nn.Module, input_size: int | None = None, depth: int = 2, in_chans: int = 3, name: str | None = None
) -> ModelSummary:
    """One row per module at ``depth`` (1: the model's children; a module above it with nothing called inside is its
    own row, and containers never called themselves are looked through), in the order the forward pass first calls
    them, with its output shape, parameters and MACs; see the module docstring.

    ``input_size`` defaults to the model's own (``default_input_size``, else 224). Pass ``reparameterize_model(model)``
    for the deploy form's rows.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1 (1: the model's children), got {depth!r}")
    if input_size is None:
        input_size = getattr(model, "default_input_size", 224)
    if input_size < 1:
        raise ValueError(f"input_size must be a positive number of pixels, got {input_size}")
    shapes: dict[str, str] = {}  # qualified name -> output shape, in the order of first calls

    def hook_for(qualified: str):
        def record(module: nn.Module, args: Any, output: Any) -> None:
            shapes.setdefault(qualified, _shape_of(output))

        return record

    named = [(qualified, module) for qualified, module in model.named_modules() if qualified]
    handles = [module.register_forward_hook(hook_for(qualified)) for qualified, module in named]
    try:
        total_macs, macs = count_macs_by_module(model, input_size, in_chans)
    finally:
        for handle in handles:
            handle.remove()
    selected = _rows_at(model, depth, set(shapes))
    order = {qualified: i for i, qualified in enumerate(shapes)}
    selected.sort(key=lambda item: order.get(item[0], len(order)))  # stable: uncalled modules keep their place
    seen: set[int] = set()  # a parameter shared by two modules counts once, in the first row holding it
    rows = []
    for qualified, module in selected:
        params = [p for p in module.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        row_params = sum(p.numel() for p in params)
        rows.append(
            SummaryRow(qualified, type(module).__name__, shapes.get(qualified, "-"), row_params, macs.get(qualified, 0))
        )
    total_params = count_params(model)
    rest_params = total_params - sum(r.params for r in rows)
    rest_macs = total_macs - sum(r.macs for r in rows)
    if rest_params or rest_macs:
        rows.append(SummaryRow(OUTSIDE, "-", "-", rest_params, rest_macs))
    label = name or getattr(model, "model_name", None) or type(model).__name__
    return ModelSummary(label, input_size, in_chans, depth, rows, total_params, total_macs)


def print_model_summary(
    name: str,
    input_size: int | None = None,
    deploy: bool = False,
    depth: int = 2,
    num_classes: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    markdown: bool = False,
) -> ModelSummary:
    """``lightnets summary``: the table of a registered model (``tv:``/``timm:`` names too), training or deploy form."""
    from lightnets.models import create_model, reparameterize_model

    kwargs = dict(model_kwargs or {})
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = create_model(name, **kwargs)
    if deploy:
        model = reparameterize_model(model)
    table = summary(model, input_size, depth, name=f"{name} ({'deploy' if deploy else 'training'} form)")
    print(table.format(markdown=markdown))
    return table
