"""Deploy form: fold every conv+BN pair and every re-parameterisable multi-branch block."""

from __future__ import annotations

import copy
import itertools

from torch import nn

from lightnets.models.layers import fuse_conv_bn

__all__ = ["reparameterize_model"]


def reparameterize_model(model: nn.Module) -> nn.Module:
    """Return a new eval-mode copy of ``model`` in its deploy form; the original is left untouched.

    Modules that define ``reparameterize()`` fold themselves (children before parents, so a block sees
    already-fused children). For baselines, adjacent Conv2d -> BatchNorm2d pairs inside ``nn.Sequential``
    containers (torchvision's Conv2dNormActivation, timm's ConvNormAct layers) are fused as well.
    """
    deployed = copy.deepcopy(model).eval()
    for module in reversed(list(deployed.modules())):
        if hasattr(module, "reparameterize") and callable(module.reparameterize):
            module.reparameterize()
    for module in list(deployed.modules()):
        if isinstance(module, nn.Sequential):
            _fuse_sequential_conv_bn(module)
    return deployed


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
