"""Building blocks shared by every lightnets family.

Everything that more than one family needs lives here once: conv-BN-act, squeeze-excitation, channel
shuffle, channel rounding, conv+BN fusion and weight initialisation. Model files import from here and
never redefine these.
"""

# No ``from __future__ import annotations`` in this file: torch.fx writes the root ``forward``'s annotations (this
# file's ClassifierModel.forward) into the code it generates, and TorchScript cannot read them as strings, so a
# model traced with FX and then scripted (timm's FX-then-TorchScript test) would fail.
import copy
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from lightnets.models import features

ActLayer = Callable[..., nn.Module] | None


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without dropping below ``round_limit`` of it.

    This is the MobileNet/timm rounding; AsymmNet rounds up instead (see :func:`round_up`).
    """
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


def round_up(value: float, divisor: int = 8) -> int:
    """Smallest multiple of ``divisor`` that is at least ``value``."""
    return int(math.ceil(value / divisor) * divisor)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: view channels as (groups, n), transpose to (n, groups), flatten.

    With ``groups`` g and n = C/g channels per group, output channel ``i*g + j`` is input channel
    ``j*n + i``: each group of the next grouped conv receives one channel from every input group.
    Written with a single inferred dimension so that it traces to ONNX with a dynamic batch.
    """
    if groups == 1:
        return x
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Return one conv with bias equal to ``bn(conv(x))`` in eval mode.

    PyTorch's own fusion arithmetic (``torch.nn.utils.fusion.fuse_conv_bn_weights``); its module-level
    ``fuse_conv_bn_eval`` would also demand that both modules are in eval mode, which deploy passes need not be.
    """
    fused = copy.deepcopy(conv)
    fused.weight, fused.bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    fused.bias.requires_grad_(conv.weight.requires_grad)
    return fused


def fuse_linear_bn(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    """Return one Linear with bias equal to ``bn(linear(x))`` in eval mode (``fuse_linear_bn_weights``)."""
    fused = copy.deepcopy(linear)
    fused.weight, fused.bias = fuse_linear_bn_weights(
        linear.weight, linear.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    fused.bias.requires_grad_(linear.weight.requires_grad)
    return fused


class ConvBnAct(nn.Module):
    """Conv (no bias) -> BatchNorm -> optional activation; ``reparameterize()`` folds the BN into the conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act_layer: ActLayer = nn.ReLU,
        padding: int | None = None,
    ) -> None:
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups, bias=False
        )
        self.bn: nn.Module = nn.BatchNorm2d(out_channels)
        self.act = (
            act_layer(inplace=True) if _takes_inplace(act_layer) else (act_layer() if act_layer else nn.Identity())
        )

    @property
    def in_channels(self) -> int:
        return self.conv.in_channels

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def reparameterize(self) -> None:
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_conv_bn(self.conv, self.bn)
            self.bn = nn.Identity()


def _takes_inplace(act_layer: ActLayer) -> bool:
    return act_layer in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid)


class SqueezeExcite(nn.Module):
    """Squeeze-excitation: GAP -> 1x1 conv -> act -> 1x1 conv -> gate, then rescale the input."""

    def __init__(
        self,
        channels: int,
        reduced_channels: int,
        act_layer: Callable[..., nn.Module] = nn.ReLU,
        gate_layer: Callable[..., nn.Module] = nn.Sigmoid,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced_channels, 1, bias=bias)
        self.act = act_layer(inplace=True) if _takes_inplace(act_layer) else act_layer()
        self.expand = nn.Conv2d(reduced_channels, channels, 1, bias=bias)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.gate(self.expand(self.act(self.reduce(scale))))
        return x * scale


POOL_TYPES = ("avg", "max", "avgmax", "")


class GlobalPool(nn.Module):
    """Global pooling of (N, C, H, W) maps to (N, C), by timm's ``global_pool`` names: ``avg``, ``max``, ``avgmax``
    (their mean), or ``''``: no pooling, the maps pass through (``forward`` then returns maps, timm's
    ``num_classes=0, global_pool=''``). ``mean`` rather than AdaptiveAvgPool keeps any input size valid."""

    def __init__(self, pool_type: str = "avg") -> None:
        super().__init__()
        if pool_type not in POOL_TYPES:
            raise ValueError(
                f"global_pool {pool_type!r} is not one of 'avg', 'max', 'avgmax' or '' (no pooling); lightnets heads "
                "keep their width, so timm's 'catavgmax' (which doubles it) is not offered"
            )
        self.pool_type = pool_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "avg":
            return x.mean((2, 3))
        if self.pool_type == "max":
            return x.amax((2, 3))
        if self.pool_type == "avgmax":
            return 0.5 * (x.mean((2, 3)) + x.amax((2, 3)))
        return x

    def extra_repr(self) -> str:
        return f"pool_type={self.pool_type!r}"


class ClassifierModel(nn.Module):
    """The part of the model API every lightnets family shares, in timm's terms.

    A subclass builds ``forward_features`` / ``forward_head``, sets ``num_features``, ``head_hidden_size``,
    ``in_chans`` and ``feature_info`` (see ``models/features.py``), and calls
    ``self.reset_classifier(num_classes, global_pool)``; its ``forward_head`` pools with ``self.global_pool``.
    This class owns the classifier (a Linear on ``head_hidden_size`` features, bias as ``classifier_bias``; Identity
    for 0 classes), ``forward_intermediates``, ``prune_intermediate_layers``, ``set_grad_checkpointing`` and
    ``default_cfg`` (the registry sets ``pretrained_cfg``, see ``models/model_cfg.py``).
    """

    classifier_bias: bool = True
    first_conv: str | tuple[str, ...] = "stem.conv"  # the conv(s) reading the image, as timm's cfg names them
    __jit_unused_properties__ = ["default_cfg"]  # noqa: RUF012 - TorchScript reads this list by name

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False  # an instance attribute, which TorchScript reads (a class one it cannot)

    @property
    def default_cfg(self) -> dict:
        """timm's older name for ``pretrained_cfg``."""
        return self.pretrained_cfg

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh classifier for ``num_classes`` (0: none, ``forward`` returns the pooled features); ``global_pool``
        changes the pooling (None keeps it; ``''`` removes it, with ``num_classes=0`` only)."""
        pool = GlobalPool(global_pool if global_pool is not None else self._pool_type())
        if pool.pool_type == "" and num_classes > 0:
            raise ValueError(
                "global_pool='' makes the head return unpooled feature maps, which no classifier takes; pass "
                "num_classes=0 with it"
            )
        self.global_pool = pool.train(self.training)
        self.num_classes = num_classes
        if num_classes <= 0:
            self.classifier: nn.Module = nn.Identity()
            return
        # The new head lives where the model does (device, dtype, train/eval), as timm's reset_classifier.
        reference = next(self.parameters(), None)
        factory = {"device": reference.device, "dtype": reference.dtype} if reference is not None else {}
        self.classifier = nn.Linear(self.head_hidden_size, num_classes, bias=self.classifier_bias, **factory)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        if self.classifier.bias is not None:
            nn.init.zeros_(self.classifier.bias)
        self.classifier.train(self.training)

    def _pool_type(self) -> str:
        pool = getattr(self, "global_pool", None)
        return pool.pool_type if isinstance(pool, GlobalPool) else "avg"

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (less memory, about
        one more forward of time). As in timm, BN running statistics are updated again by the recomputation."""
        self.grad_checkpointing = enable

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's signature: the maps of ``feature_info`` at ``indices`` (None: all, an int n: the last n) and,
        unless ``intermediates_only``, the ``forward_features`` output, as ``(final, maps)``. ``stop_early`` ends the
        pass at the last map taken (which is then ``final``). lightnets models have no final norm, so ``norm`` changes
        nothing; ``output_fmt`` is NCHW only."""
        return features.forward_intermediates(self, x, indices, intermediates_only, stop_early, output_fmt)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Remove every layer after the last feature map in ``indices`` (and with ``prune_head`` the head), so that
        ``forward_features`` ends there; returns the absolute indices, for ``forward_intermediates``. timm's
        contract; ``prune_norm`` changes nothing (no final norm)."""
        return features.prune_intermediate_layers(self, indices, prune_head)


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pool to (N, C) (for baselines; lightnets heads use :class:`GlobalPool`)."""
    return x.mean((2, 3))


def init_weights(model: nn.Module) -> None:
    """He-normal (fan-out) convs, unit BN, small-normal classifiers: the torchvision/timm default."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def zero_init_last_bn(model: nn.Module) -> None:
    """Call ``zero_init_last()`` on every block that has one: the last BN of each residual branch starts at 0.

    Each residual block then starts as the identity (timm's ``zero_init_last``), so a deep stack of them does not
    add up full-variance branches at initialisation. It changes the starting point only, not the architecture.
    """
    for module in model.modules():
        if module is not model and hasattr(module, "zero_init_last"):
            module.zero_init_last()


def pad_kernel_to(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a square conv kernel symmetrically to ``size`` x ``size`` (a 1x1 lands in the centre)."""
    pad = (size - kernel.shape[-1]) // 2
    return F.pad(kernel, [pad, pad, pad, pad])
