"""Parameter and MAC counts, as the spec defines them (FlopCounterMode FLOPs / 2, batch 1, eval)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightnets.models.reparameterize import reparameterize_model

__all__ = ["Complexity", "complexity", "count_macs", "count_macs_by_module", "count_params", "print_model_table"]


@dataclass(frozen=True)
class Complexity:
    input_size: int
    params: int
    macs: int
    deploy_params: int
    deploy_macs: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int, in_chans: int = 3) -> int:
    """Multiply-accumulates of convolutions and linear layers for one image, in eval mode."""
    return count_macs_by_module(model, input_size, in_chans)[0]


def count_macs_by_module(model: nn.Module, input_size: int, in_chans: int = 3) -> tuple[int, dict[str, int]]:
    """:func:`count_macs`, and the MACs inside each submodule that has any, by qualified name ("" the model).

    One forward pass under FlopCounterMode, whose module tracker credits every op to each module running it, so a
    module's count includes its children's. ``lightnets.summary`` reads its rows from here: its totals are
    :func:`count_macs`'s by construction.
    """
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        x = torch.zeros(1, in_chans, input_size, input_size, device=param.device, dtype=param.dtype)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    # The tracker names modules "<root class>.<qualified name>"; "Global" is everything, the root's own total.
    root = type(model).__name__
    by_module = {
        name[len(root) + 1 :] if name != root else "": sum(flops.values()) // 2
        for name, flops in counter.get_flop_counts().items()
        if name == root or name.startswith(root + ".")
    }
    return counter.get_total_flops() // 2, by_module


def complexity(model: nn.Module, input_size: int | None = None) -> Complexity:
    """Params and MACs of ``model`` and of its deploy form at ``input_size`` (default: the model's own)."""
    input_size = input_size or getattr(model, "default_input_size", 224)
    deployed = reparameterize_model(model)
    return Complexity(
        input_size=input_size,
        params=count_params(model),
        macs=count_macs(model, input_size),
        deploy_params=count_params(deployed),
        deploy_macs=count_macs(deployed, input_size),
    )


def print_model_table(names: list[str], input_size: int | None, num_classes: int | None, markdown: bool) -> None:
    """``lightnets models``: input size, params and MACs of each model in both forms, one row per model."""
    from lightnets.models import create_model
    from lightnets.tables import format_table

    headers = ["model", "input", "params (M)", "deploy params (M)", "MACs (M)", "deploy MACs (M)"]
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    # Plain tables stream a row per model (the big ParNets take seconds each on a small CPU), so the widths are
    # fixed up front: names are known, numbers fit under their headers.
    widths = [max(len(headers[0]), *map(len, names)), *map(len, headers[1:])]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    if not markdown:
        print(line(headers))
        print("  ".join("-" * w for w in widths))
    rows = []
    for name in names:
        stats = complexity(create_model(name, **kwargs), input_size)
        row = [name, str(stats.input_size), f"{stats.params / 1e6:.3f}", f"{stats.deploy_params / 1e6:.3f}"]
        row += [f"{stats.macs / 1e6:.1f}", f"{stats.deploy_macs / 1e6:.1f}"]
        rows.append(row)
        if not markdown:
            print(line(row), flush=True)
    if markdown:
        print(format_table(headers, rows, markdown=True))
