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
import types
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
from torch import nn

__all__ = [
    "FeatureInfo",
    "FeatureListNet",
    "feature",
    "feature_take_indices",
    "forward_intermediates",
    "prune_intermediate_layers",
]


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
    model: nn.Module,
    x: torch.Tensor,
    indices: int | Sequence[int] | None = None,
    intermediates_only: bool = False,
    stop_early: bool = False,
    output_fmt: str = "NCHW",
) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
    """The feature maps ``indices`` (see :func:`feature_take_indices`) of ``model`` on ``x``, and unless
    ``intermediates_only`` the ``forward_features`` output too, as ``(final, intermediates)``.

    One pass of ``forward_features`` with forward hooks on the chosen modules. With ``stop_early`` the pass runs only
    the layers the chosen maps need (the traced graph cut there, as :class:`FeatureListNet` runs it) and ``final``
    is the last chosen map, as in timm.
    """
    if output_fmt != "NCHW":
        raise ValueError(f"output_fmt {output_fmt!r}: lightnets feature maps are NCHW only")
    modules = _feature_modules(model)
    taken = feature_take_indices(len(modules), indices)
    if stop_early:
        graph = _graph_to(model, [modules[index] for index in taken])
        intermediates = torch.fx.Interpreter(model, graph=graph).run(x)
        return intermediates if intermediates_only else (intermediates[-1], intermediates)
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


def _graph_to(model: nn.Module, outputs: Sequence[str]) -> torch.fx.Graph:
    """``model``'s forward traced (feature modules as single calls), returning the outputs of the modules named
    ``outputs`` as a list, everything else cut away."""
    graph = _FeatureTracer(_feature_modules(model)).trace(model)
    graph.owning_module = model  # dead-code elimination asks the modules whether a call is pure
    calls = [node for node in graph.nodes if node.op == "call_module"]
    nodes = []
    for name in outputs:
        found = [node for node in calls if node.target == name]
        if len(found) != 1:
            raise ValueError(f"feature module {name} runs {len(found)} times in the forward pass; it must run once")
        nodes.append(found[0])
    output = next(node for node in graph.nodes if node.op == "output")
    output.args = (nodes,)
    graph.eliminate_dead_code()
    graph.lint()
    return graph


def _used_modules(graph: torch.fx.Graph) -> set[str]:
    return {str(node.target) for node in graph.nodes if node.op in ("call_module", "get_attr")}


def prune_intermediate_layers(model: nn.Module, indices: int | Sequence[int] = 1, prune_head: bool = True) -> list[int]:
    """Cut ``model`` after the last feature map of ``indices``; returns their absolute indices (timm's contract).

    ``forward_features`` then ends at that map: its graph (the model's own forward traced, cut there) is run by
    ``torch.fx.Interpreter`` on the model itself, and every module the cut graph no longer calls is deleted, so
    none is left without gradients (which DDP would refuse). With ``prune_head`` the head goes too: the classifier
    and pooling (``reset_classifier(0, '')``) and any layer between them (``forward_head`` then returns the map it
    is given). Without it, pruning at the last map keeps the model as it was.
    """
    modules = _feature_modules(model)
    taken = feature_take_indices(len(modules), indices)
    last = max(taken)
    if last == len(modules) - 1 and not prune_head:
        return taken
    full = _graph_to(model, [modules[-1]])
    head = [name for name, _ in model.named_children() if not _needed(name, _used_modules(full))]
    cut = _graph_to(model, [modules[last]])
    keep = _used_modules(cut)
    output = next(node for node in cut.nodes if node.op == "output")
    output.args = (output.args[0][0],)  # forward_features returns the map itself, not a list
    for name, _ in reversed(list(model.named_modules())):
        if name and not _needed(name, keep) and (prune_head or name.split(".")[0] not in head):
            parent, _, child = name.rpartition(".")
            delattr(model.get_submodule(parent), child)  # a Sequential keeps the other keys: names stay the model's
    if prune_head:
        for name in head:
            setattr(model, name, nn.Identity())
        model.reset_classifier(0, "")
    model.num_features = model.head_hidden_size = int(model.feature_info[last]["num_chs"])
    model.feature_info = model.feature_info[: last + 1]

    model.pruned_graph = cut
    # The instance's own forward_features (the class's runs the deleted layers); a bound method, so that a deepcopy
    # of the model runs its own copy.
    model.forward_features = types.MethodType(_run_pruned_graph, model)
    return taken


def _run_pruned_graph(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.fx.Interpreter(model, graph=model.pruned_graph).run(x)


def _needed(name: str, used: set[str]) -> bool:
    """A module is needed when the graph calls it, something inside it or something it holds."""
    return any(name == u or u.startswith(name + ".") or name.startswith(u + ".") for u in used)


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
        # GraphModule copies the submodules the graph calls, under their qualified names; pruned, they become this
        # module's, so the state-dict keys are the model's.
        traced = torch.fx.GraphModule(model, _graph_to(model, chosen))
        traced.delete_all_unused_submodules()
        for name, child in traced.named_children():
            self.add_module(name, child)
        self.graph = copy.deepcopy(traced.graph)  # our own: the GraphModule owns the one it holds
        for attribute in ("model_name", "default_input_size", "in_chans", "pretrained_cfg"):
            if hasattr(model, attribute):
                setattr(self, attribute, getattr(model, attribute))

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name for ``pretrained_cfg``."""
        return self.pretrained_cfg

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return torch.fx.Interpreter(self, graph=self.graph).run(x)
