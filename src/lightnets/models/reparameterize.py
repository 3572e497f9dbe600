"""Deploy form: fold every conv+BN pair and every re-parameterisable multi-branch block."""

from __future__ import annotations

import copy
import itertools
from collections import Counter

import torch.fx
from torch import nn

from lightnets.models.layers import fuse_conv_bn

__all__ = ["reparameterize_model"]


def reparameterize_model(model: nn.Module) -> nn.Module:
    """Return a new eval-mode copy of ``model`` in its deploy form; the original is left untouched.

    Modules that define ``reparameterize()`` fold themselves (children before parents, so a block sees
    already-fused children). Any Conv2d -> BatchNorm2d pair left over (the baselines: torchvision's
    ResNet stem and blocks, timm's ConvNormAct layers) is then found on a symbolic trace of the model
    and fused in place, so the module tree, and with it the model API, stays as it was. Models that
    cannot be traced fall back to fusing adjacent pairs inside ``nn.Sequential`` containers.
    """
    deployed = copy.deepcopy(model).eval()
    for module in reversed(list(deployed.modules())):
        if hasattr(module, "reparameterize") and callable(module.reparameterize):
            module.reparameterize()
    if any(isinstance(module, nn.BatchNorm2d) for module in deployed.modules()):
        try:
            _fuse_traced_conv_bn(deployed)
        except Exception:  # data-dependent control flow defeats tracing: fall back to Sequentials
            for module in list(deployed.modules()):
                if isinstance(module, nn.Sequential):
                    _fuse_sequential_conv_bn(module)
    return deployed


class _ConvBnLeafTracer(torch.fx.Tracer):
    """Keeps every conv and BN (timm's BatchNormAct2d included) a single call in the graph."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, (nn.Conv2d, nn.BatchNorm2d)) or super().is_leaf_module(module, qualified_name)


def _fuse_traced_conv_bn(model: nn.Module) -> int:
    """Fuse every BN whose only input is a conv used nowhere else; returns how many pairs were fused."""
    graph = _ConvBnLeafTracer().trace(model)
    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    fused = 0
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        source = node.args[0] if node.args else None
        if not (isinstance(source, torch.fx.Node) and source.op == "call_module"):
            continue
        conv, bn = modules[source.target], modules[node.target]
        # A module called twice, or a conv output read by anything besides the BN, cannot be folded.
        if not isinstance(conv, nn.Conv2d) or len(source.users) != 1 or calls[source.target] + calls[node.target] != 2:
            continue
        after_bn = _after_batchnorm(bn)
        if after_bn is None or not bn.track_running_stats or bn.num_features != conv.out_channels:
            continue
        model.set_submodule(source.target, fuse_conv_bn(conv, bn))
        model.set_submodule(node.target, after_bn)
        fused += 1
    return fused


def _after_batchnorm(bn: nn.BatchNorm2d) -> nn.Module | None:
    """What must still run once the BN itself is folded: nothing, or the activation a BN-act layer adds."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    if hasattr(bn, "act") and hasattr(bn, "drop"):  # timm's BatchNormAct2d: bn, then dropout, then act
        return nn.Sequential(bn.drop, bn.act)
    return None


def _fuse_sequential_conv_bn(sequential: nn.Sequential) -> None:
    names = list(sequential._modules)
    for first, second in itertools.pairwise(names):
        conv, bn = sequential._modules[first], sequential._modules[second]
        if (
            isinstance(conv, nn.Conv2d)
            and isinstance(bn, nn.BatchNorm2d)
            and bn.track_running_stats
            and bn.num_features == conv.out_channels
        ):
            sequential._modules[first] = fuse_conv_bn(conv, bn)
            sequential._modules[second] = nn.Identity()
