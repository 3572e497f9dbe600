"""Backbone features, in timm's convention: ``feature_info``, ``FeatureInfo``, ``out_indices``, ``features_only``.

Every lightnets model lists its feature maps in ``model.feature_info``, one dict per map in the order the network
computes them: ``num_chs`` (channels), ``reduction`` (input size / map size) and ``module`` (the submodule whose
output it is). ``model.forward_intermediates(x, indices)`` returns those maps from one forward pass (forward hooks
on the listed modules), and ``create_model(name, features_only=True, out_indices=...)`` builds a
:class:`FeatureListNet`: a module whose forward returns the list of chosen maps and nothing else.

:class:`FeatureListNet` is the model's own forward traced with ``torch.fx`` (the stock tracer), its output replaced
by the chosen feature modules' outputs and dead code eliminated. It therefore holds only the modules those maps
need (no head, no later stages: ``out_indices=(1,)`` of a ParNet holds neither stream 3 nor the fusions), under the
model's own state-dict keys, and it works for ParNet, whose three streams are no chain of modules. The feature
modules and every module with a ``reparameterize()`` stay single calls in the graph, run as modules, so
``reparameterize_model`` folds a feature extractor exactly as it folds the whole model. The graph is run by
``torch.fx.Interpreter``, which looks each module up by name at every call: modules the deploy pass replaces are
the ones that run.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
from torch import nn

__all__ = ["FeatureInfo", "FeatureListNet", "feature", "feature_take_indices", "forward_intermediates"]


def feature(module: str, num_chs: int, reduction: int) -> dict[str, Any]:
    """One ``feature_info`` entry: the output of ``module``, ``num_chs`` channels, input size / ``reduction`` wide."""
    return {"num_chs": num_chs, "reduction": reduction, "module": module}


def feature_take_indices(num_features: int, indices: int | Sequence[int] | None = None) -> list[int]:
    """Absolute, sorted feature indices: None takes all, an int ``n`` the last n, a sequence those (negative from
    the end), as timm's ``out_indices`` and ``forward_intermediates(indices=)`` read them."""
    if indices is None:
        return list(range(num_features))
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= num_features:
            raise ValueError(f"take the last n features with n from 1 to {num_features}, got {indices}")
        return list(range(num_features - indices, num_features))
    taken = []
    for index in indices:
        absolute = index + num_features if index < 0 else index
        if not 0 <= absolute < num_features:
            raise ValueError(
                f"feature index {index} is out of range: this model has {num_features} feature maps "
                f"(0 to {num_features - 1}, or -{num_features} to -1 from the end)"
            )
        taken.append(absolute)
    if not taken:
        raise ValueError("out_indices is empty; give at least one feature index")
    return sorted(set(taken))


class FeatureInfo:
    """The chosen entries of a ``feature_info`` list: channels, reductions and module names of each output.

    ``info`` is the model's whole list and ``out_indices`` the entries a :class:`FeatureListNet` returns. As in
    timm, ``channels()``, ``reduction()`` and ``module_name()`` give the chosen entries' values, and with ``idx``
    the value of one absolute entry; ``reductions()`` is ``reduction()``.
    """

    def __init__(self, feature_info: Sequence[dict[str, Any]], out_indices: int | Sequence[int] | None = None):
        for entry in feature_info:
            missing = {"num_chs", "reduction", "module"} - set(entry)
            if missing:
                raise ValueError(f"feature_info entry {entry} lacks {', '.join(sorted(missing))}")
        self.info = [dict(entry) for entry in feature_info]
        self.out_indices = tuple(feature_take_indices(len(self.info), out_indices))

    def from_other(self, out_indices: int | Sequence[int] | None) -> FeatureInfo:
        return FeatureInfo(self.info, out_indices)

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, int):
            return self.info[idx][key]
        return [self.info[i][key] for i in idx]

    def get_dicts(self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None) -> Any:
        def pick(entry: dict[str, Any]) -> dict[str, Any]:
            return dict(entry) if keys is None else {k: entry[k] for k in keys}

        if isinstance(idx, int):
            return pick(self.info[idx])
        return [pick(self.info[i]) for i in (self.out_indices if idx is None else idx)]

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("reduction", idx)

    reductions = reduction

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("module", idx)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return dict(self.info[idx])

    def __len__(self) -> int:
        return len(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo(out_indices={self.out_indices}, channels={self.channels()}, reduction={self.reduction()})"


def _feature_modules(model: nn.Module) -> list[str]:
    info = getattr(model, "feature_info", None)
    if not info:
        label = getattr(model, "model_name", None) or type(model).__name__
        raise ValueError(f"{label} lists no feature_info, so it has no feature maps to return")
    names = [entry["module"] if isinstance(entry, dict) else entry for entry in info]
    # A feature module inside another would be hidden: the outer one runs as one call.
    nested = [(a, b) for a in names for b in names if b.startswith(a + ".")]
    if nested:
        raise ValueError(f"feature module {nested[0][1]} lies inside feature module {nested[0][0]}")
    return names


def forward_intermediates(
    model: nn.Module, x: torch.Tensor, indices: int | Sequence[int] | None = None, intermediates_only: bool = False
) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
    """The feature maps ``indices`` (see :func:`feature_take_indices`) of ``model`` on ``x``, and unless
    ``intermediates_only`` the ``forward_features`` output too, as ``(final, intermediates)``.

    One pass of ``forward_features`` with forward hooks on the chosen modules; it always runs to the end (a
    pruned extractor is ``create_model(name, features_only=True)``).
    """
    modules = _feature_modules(model)
    taken = feature_take_indices(len(modules), indices)
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for index in taken:

        def keep(module: nn.Module, args: Any, output: torch.Tensor, index: int = index) -> None:
            captured[index] = output

        handles.append(model.get_submodule(modules[index]).register_forward_hook(keep))
    try:
        final = model.forward_features(x)
    finally:
        for handle in handles:
            handle.remove()
    intermediates = [captured[index] for index in taken]
    return intermediates if intermediates_only else (final, intermediates)


class _FeatureTracer(torch.fx.Tracer):
    """Keeps the feature modules and every re-parameterisable module single calls (see the module docstring)."""

    def __init__(self, feature_modules: Sequence[str]) -> None:
        super().__init__()
        self.feature_modules = set(feature_modules)

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return (
            qualified_name in self.feature_modules
            or callable(getattr(module, "reparameterize", None))
            or super().is_leaf_module(module, qualified_name)
        )


class FeatureListNet(nn.Module):
    """A model's feature maps at ``out_indices``: ``forward(x)`` returns them as a list, in index order.

    ``feature_info`` is a :class:`FeatureInfo` of the chosen maps. Only the modules these maps depend on are kept,
    under the model's own names, so the model's state dict (less the head and any unused stage) loads into it.
    """

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] | None = None) -> None:
        super().__init__()
        modules = _feature_modules(model)
        try:
            self.feature_info = FeatureInfo(model.feature_info, out_indices)
        except ValueError as error:
            label = getattr(model, "model_name", None) or type(model).__name__
            raise ValueError(f"out_indices {out_indices!r} of {label}: {error}") from None
        chosen = [modules[i] for i in self.feature_info.out_indices]
        graph = _FeatureTracer(modules).trace(model)
        calls = [node for node in graph.nodes if node.op == "call_module"]
        outputs = []
        for name in chosen:
            found = [node for node in calls if node.target == name]
            if len(found) != 1:
                raise ValueError(f"feature module {name} runs {len(found)} times in the forward pass; it must run once")
            outputs.append(found[0])
        # GraphModule copies the submodules the graph calls, under their qualified names; pruned, they become this
        # module's, so the state-dict keys are the model's.
        traced = torch.fx.GraphModule(model, graph)
        output = next(node for node in traced.graph.nodes if node.op == "output")
        output.args = (outputs,)
        traced.graph.eliminate_dead_code()
        traced.graph.lint()
        traced.delete_all_unused_submodules()
        for name, child in traced.named_children():
            self.add_module(name, child)
        self.graph = copy.deepcopy(traced.graph)  # our own: the GraphModule owns the one it holds
        for attribute in ("model_name", "default_input_size", "pretrained_cfg"):
            if hasattr(model, attribute):
                setattr(self, attribute, getattr(model, attribute))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return torch.fx.Interpreter(self, graph=self.graph).run(x)
