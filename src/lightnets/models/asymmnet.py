"""AsymmNet: ultralight networks built from asymmetrical bottlenecks.

H. Yang, Z. Shen, Y. Zhao, "AsymmNet: Towards ultralight convolution neural networks using asymmetrical
bottlenecks", CVPR 2021 Workshops, pp. 2339-2348. https://arxiv.org/abs/2104.07770
Authors' code: https://github.com/Spark001/AsymmNet

The asymmetrical bottleneck is a MobileNetV3 bottleneck whose first pointwise conv produces only
E - r*Cin channels; the input is reused by concatenation ([x]*r, new, [x]*r) so the depthwise conv and
the second pointwise conv see E + r*Cin channels, moving MACs from the first to the second pointwise conv.
``asymm_rate`` (r) defaults to 1; r=0 gives the plain MobileNetV3 bottleneck. The optional 2-group
channel shuffle of the concatenated tensor (``shuffle=True``) is off by default, as in the released model.

Where the released code differs from the paper's reference point (MobileNetV3), lightnets follows the code:

* AsymmNet-Small expands to 1280 before the classifier (the MobileNetV3 paper uses 1024) and has no SE
  on the 576-wide head layer.
* Every scaled width (stem, each expansion and output, head squeeze) is rounded *up* to a multiple of 8,
  not MobileNet's round-to-nearest with a 90 % floor.
* The authors' MAC tool undercounts parameters (a kxk depthwise kernel as k weights per channel, and the
  stem as 3*3*16), so the paper reports 5.99 M for Large 1.0x; a faithful model has ~6.08 M. Its MAC
  count (216.9 M) is right.

The authors' PyTorch port (``pytorch/asymmnet.py``) has no saving code; a bare state dict of it (``module.``
keys or not) loads through ``create_model(name, checkpoint=PATH)``, :func:`checkpoint_filter_fn` renaming the
keys. Their released model was trained in MXNet on RGB input normalised with mean (123.68, 116.779, 103.939)
and std (58.393, 57.12, 57.375) on the 0-255 scale, which ``AUTHORS_PRETRAINED_CFG`` records.

CIFAR form: the stem and the first stride-2 bottleneck get stride 1, so the last stage runs at 4x4.

Training stability (not architecture): with ``zero_init_last=True`` (the default) the BN after the projecting
1x1 conv of every bottleneck with a residual add starts with weight 0, so it starts as the identity (timm's
``zero_init_last``). AsymmNet trains stably either way (measured on CIFAR-10: no loss spike with weight 1 either);
the zero start lowers the first-step gradient norm (0.44 against 0.59) and leaves accuracy within seed noise, and
keeps one convention across the families. Loaded weights replace this init.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

from lightnets.models.features import feature
from lightnets.models.layers import (
    ClassifierModel,
    ConvBnAct,
    SqueezeExcite,
    channel_shuffle,
    init_weights,
    round_up,
    zero_init_last_bn,
)
from lightnets.models.registry import register_model
from lightnets.models.weights import remap_state_dict

__all__ = ["AsymmBlockConfig", "AsymmNet", "AsymmNetConfig", "AsymmetricBottleneck"]


class AsymmetricBottleneck(nn.Module):
    """Asymmetrical inverted bottleneck.

    1x1 conv Cin -> E - r*Cin (BN, act); concatenate [x]*r, new, [x]*r (E + r*Cin channels); kxk
    depthwise conv (BN, act); optional SE; linear 1x1 conv -> Cout (BN); residual iff Cin == Cout and
    stride 1. Without expansion (E not above max(Cin, r*Cin)) the depthwise conv runs on x directly.
    """

    def __init__(
        self,
        in_channels: int,
        expand_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        use_se: bool,
        act_layer: Callable[..., nn.Module],
        asymm_rate: int = 1,
        shuffle: bool = False,
    ) -> None:
        super().__init__()
        if asymm_rate < 0:
            raise ValueError(f"asymm_rate must be >= 0, got {asymm_rate}")
        self.asymm_rate = asymm_rate
        self.expand: ConvBnAct | None = None
        if expand_channels > max(in_channels, asymm_rate * in_channels):
            self.expand = ConvBnAct(in_channels, expand_channels - asymm_rate * in_channels, 1, act_layer=act_layer)
            dw_channels = expand_channels + asymm_rate * in_channels
        else:
            dw_channels = in_channels
        # Shuffling only mixes something when reused input sits beside the new features.
        self.shuffle = shuffle and self.expand is not None and asymm_rate > 0
        self.dw = ConvBnAct(
            dw_channels, dw_channels, kernel_size, stride=stride, groups=dw_channels, act_layer=act_layer
        )
        self.se: nn.Module = (
            SqueezeExcite(dw_channels, round_up(dw_channels / 4), act_layer=nn.ReLU, gate_layer=nn.Hardsigmoid)
            if use_se
            else nn.Identity()
        )
        self.project = ConvBnAct(dw_channels, out_channels, 1, act_layer=None)
        self.has_residual = stride == 1 and in_channels == out_channels

    def zero_init_last(self) -> None:
        if self.has_residual:
            nn.init.zeros_(self.project.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.expand is not None:
            # The input reused r times on each side of the new features; a list built by appending, which
            # TorchScript can type (a starred list cannot).
            parts: list[torch.Tensor] = []
            for _ in range(self.asymm_rate):
                parts.append(x)
            parts.append(self.expand(x))
            for _ in range(self.asymm_rate):
                parts.append(x)
            out = torch.cat(parts, dim=1)
            if self.shuffle:
                out = channel_shuffle(out, 2)
        out = self.project(self.se(self.dw(out)))
        return out + x if self.has_residual else out


@dataclass(frozen=True)
class AsymmBlockConfig:
    """One bottleneck row at width 1.0x (the MobileNetV3 table's columns)."""

    kernel_size: int
    expand_channels: int
    out_channels: int
    use_se: bool
    act_layer: Callable[..., nn.Module]
    stride: int


@dataclass(frozen=True)
class AsymmNetConfig:
    blocks: tuple[AsymmBlockConfig, ...]
    head_squeeze: int
    head_hidden: int = 1280
    stem_channels: int = 16


def _rows(*rows: tuple) -> tuple[AsymmBlockConfig, ...]:
    return tuple(AsymmBlockConfig(*row) for row in rows)


RE, HS = nn.ReLU, nn.Hardswish

# (kernel, exp, out, SE, act, stride)
ASYMMNET_LARGE = AsymmNetConfig(
    blocks=_rows(
        (3, 16, 16, False, RE, 1),
        (3, 64, 24, False, RE, 2),
        (3, 72, 24, False, RE, 1),
        (5, 72, 40, True, RE, 2),
        (5, 120, 40, True, RE, 1),
        (5, 120, 40, True, RE, 1),
        (3, 240, 80, False, HS, 2),
        (3, 200, 80, False, HS, 1),
        (3, 184, 80, False, HS, 1),
        (3, 184, 80, False, HS, 1),
        (3, 480, 112, True, HS, 1),
        (3, 672, 112, True, HS, 1),
        (5, 672, 160, True, HS, 2),
        (5, 960, 160, True, HS, 1),
        (5, 960, 160, True, HS, 1),
    ),
    head_squeeze=960,
)

ASYMMNET_SMALL = AsymmNetConfig(
    blocks=_rows(
        (3, 16, 16, True, RE, 2),
        (3, 72, 24, False, RE, 2),
        (3, 88, 24, False, RE, 1),
        (5, 96, 40, True, HS, 2),
        (5, 240, 40, True, HS, 1),
        (5, 240, 40, True, HS, 1),
        (5, 120, 48, True, HS, 1),
        (5, 144, 48, True, HS, 1),
        (5, 288, 96, True, HS, 2),
        (5, 576, 96, True, HS, 1),
        (5, 576, 96, True, HS, 1),
    ),
    head_squeeze=576,
)

ASYMMNET_CONFIGS: dict[str, AsymmNetConfig] = {"large": ASYMMNET_LARGE, "small": ASYMMNET_SMALL}


def _cifar_blocks(blocks: tuple[AsymmBlockConfig, ...]) -> tuple[AsymmBlockConfig, ...]:
    """Give the first stride-2 row stride 1; with a stride-1 stem the last stage then runs at 4x4 on 32x32."""
    first_down = next(i for i, row in enumerate(blocks) if row.stride == 2)
    return tuple(replace(row, stride=1) if i == first_down else row for i, row in enumerate(blocks))


class AsymmNet(ClassifierModel):
    first_conv = "stem.conv"

    def __init__(
        self,
        config: AsymmNetConfig,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        cifar: bool = False,
        drop_rate: float = 0.2,
        asymm_rate: int = 1,
        shuffle: bool = False,
        in_chans: int = 3,
        zero_init_last: bool = True,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        self.default_input_size = 32 if cifar else 224
        self.in_chans = in_chans
        block_rows = _cifar_blocks(config.blocks) if cifar else config.blocks

        def scaled(channels: int) -> int:
            return round_up(channels * width_mult, 8)

        stem_channels = scaled(config.stem_channels)
        self.stem = ConvBnAct(in_chans, stem_channels, 3, stride=1 if cifar else 2, act_layer=nn.Hardswish)
        blocks = []
        in_channels = stem_channels
        # Feature maps: the last module at each resolution (the stem where the first block downsamples at once).
        self.feature_info, reduction = [], 1 if cifar else 2
        last = feature("stem", stem_channels, reduction)
        for index, row in enumerate(block_rows):
            if row.stride == 2:
                self.feature_info.append(last)
                reduction *= 2
            out_channels = scaled(row.out_channels)
            last = feature(f"blocks.{index}", out_channels, reduction)
            blocks.append(
                AsymmetricBottleneck(
                    in_channels,
                    scaled(row.expand_channels),
                    out_channels,
                    row.kernel_size,
                    row.stride,
                    row.use_se,
                    row.act_layer,
                    asymm_rate=asymm_rate,
                    shuffle=shuffle,
                )
            )
            in_channels = out_channels
        self.feature_info.append(last)
        self.blocks = nn.Sequential(*blocks)
        self.num_features = scaled(config.head_squeeze)
        self.conv_squeeze = ConvBnAct(in_channels, self.num_features, 1, act_layer=nn.Hardswish)
        # The hidden head width is not scaled, and this conv has neither bias nor BN, as released.
        self.head_hidden_size = config.head_hidden
        self.conv_head = nn.Conv2d(self.num_features, self.head_hidden_size, 1, bias=False)
        self.head_act = nn.Hardswish(inplace=True)
        self.drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes, global_pool)
        init_weights(self)
        if zero_init_last:
            zero_init_last_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_sequential(self.blocks, len(self.blocks), x, use_reentrant=False)
        else:
            x = self.blocks(x)
        return self.conv_squeeze(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # A 1x1 conv on the pooled map (rather than a Linear) keeps the conv's He initialisation; unpooled
        # (global_pool='') it runs at every position, as timm's MobileNetV3 head does.
        unpooled = self.global_pool.pool_type == ""
        x = x if unpooled else self.global_pool(x)[:, :, None, None]
        x = self.head_act(self.conv_head(x))
        x = self.drop(x if unpooled else x.flatten(1))
        return x if pre_logits else self.classifier(x)


# The authors' MXNet training (train.py): RGB, mean/std on 0-255 (here on 0-1), resize 256, centre crop 224.
AUTHORS_PRETRAINED_CFG = {
    "source": "Spark001/AsymmNet (pytorch/asymmnet.py; MXNet train.py preprocessing)",
    "mean": tuple(v / 255 for v in (123.68, 116.779, 103.939)),
    "std": tuple(v / 255 for v in (58.393, 57.12, 57.375)),
    "channel_order": "RGB",
    "input_size": 224,
    "crop_pct": 0.875,
    "interpolation": "bilinear",
}

# Our module -> the authors' (their _BasicUnit has .conv/.bn like our ConvBnAct; the stem and head are Sequentials).
_MODULES = {
    "stem.conv": "first_block.0",
    "stem.bn": "first_block.1",
    "conv_squeeze.conv": "last_block.0",
    "conv_squeeze.bn": "last_block.1",
    "conv_head": "last_block.4",
    "classifier": "output",
}
_BLOCK_MODULES = {"expand": "expand", "dw": "dw_conv", "project": "pw_conv_linear", "se.reduce": "se.out.0"}
_BLOCK_MODULES["se.expand"] = "se.out.2"


def authors_key_map(model: AsymmNet) -> dict[str, str]:
    """The authors' name of every key of ``model``'s state dict (their PyTorch port)."""
    names = {}
    for key in model.state_dict():
        module, leaf = key.rsplit(".", 1)
        if module in _MODULES:
            names[key] = f"{_MODULES[module]}.{leaf}"
            continue
        _, index, inner = module.split(".", 2)  # blocks.<i>.<inner>
        part = next(p for p in _BLOCK_MODULES if inner == p or inner.startswith(p + "."))
        names[key] = f"asymm_block.{index}.{_BLOCK_MODULES[part]}{inner[len(part) :]}.{leaf}"
    return names


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: AsymmNet) -> dict[str, torch.Tensor]:
    """Rename the authors' keys (``module.`` already stripped) to lightnets'; lightnets' own keys pass unchanged."""
    if "first_block.0.weight" not in state_dict:
        return state_dict
    return remap_state_dict(state_dict, model, authors_key_map(model))


def _create_asymmnet(variant: str, width_mult: float, cifar: bool = False, **kwargs) -> AsymmNet:
    kwargs.setdefault("num_classes", 10 if cifar else 1000)
    return AsymmNet(ASYMMNET_CONFIGS[variant], width_mult=width_mult, cifar=cifar, **kwargs)


@register_model
def asymmnet_large_x0_35(**kwargs) -> AsymmNet:
    return _create_asymmnet("large", 0.35, **kwargs)


@register_model
def asymmnet_large_x0_5(**kwargs) -> AsymmNet:
    return _create_asymmnet("large", 0.5, **kwargs)


@register_model
def asymmnet_large_x0_75(**kwargs) -> AsymmNet:
    return _create_asymmnet("large", 0.75, **kwargs)


@register_model
def asymmnet_large_x1_0(**kwargs) -> AsymmNet:
    return _create_asymmnet("large", 1.0, **kwargs)


@register_model
def asymmnet_small_x0_35(**kwargs) -> AsymmNet:
    return _create_asymmnet("small", 0.35, **kwargs)


@register_model
def asymmnet_small_x0_5(**kwargs) -> AsymmNet:
    return _create_asymmnet("small", 0.5, **kwargs)


@register_model
def asymmnet_small_x0_75(**kwargs) -> AsymmNet:
    return _create_asymmnet("small", 0.75, **kwargs)


@register_model
def asymmnet_small_x1_0(**kwargs) -> AsymmNet:
    return _create_asymmnet("small", 1.0, **kwargs)


@register_model
def asymmnet_large_x0_35_cifar(**kwargs) -> AsymmNet:
    return _create_asymmnet("large", 0.35, cifar=True, **kwargs)


@register_model
def asymmnet_large_x0_5_cifar(**kwargs) -> AsymmNet:
    return _create_asymmnet("large", 0.5, cifar=True, **kwargs)


@register_model
def asymmnet_large_x0_75_cifar(**kwargs) -> AsymmNet:
    return _create_asymmnet("large", 0.75, cifar=True, **kwargs)


@register_model
def asymmnet_large_x1_0_cifar(**kwargs) -> AsymmNet:
    return _create_asymmnet("large", 1.0, cifar=True, **kwargs)


@register_model
def asymmnet_small_x0_35_cifar(**kwargs) -> AsymmNet:
    return _create_asymmnet("small", 0.35, cifar=True, **kwargs)


@register_model
def asymmnet_small_x0_5_cifar(**kwargs) -> AsymmNet:
    return _create_asymmnet("small", 0.5, cifar=True, **kwargs)


@register_model
def asymmnet_small_x0_75_cifar(**kwargs) -> AsymmNet:
    return _create_asymmnet("small", 0.75, cifar=True, **kwargs)


@register_model
def asymmnet_small_x1_0_cifar(**kwargs) -> AsymmNet:
    return _create_asymmnet("small", 1.0, cifar=True, **kwargs)
