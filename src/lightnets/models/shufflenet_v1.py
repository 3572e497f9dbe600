"""ShuffleNet v1: pointwise group convolution and channel shuffle.

X. Zhang, X. Zhou, M. Lin, J. Sun, "ShuffleNet: An Extremely Efficient Convolutional Neural Network
for Mobile Devices", CVPR 2018. https://arxiv.org/abs/1707.01083
Authors' re-release: https://github.com/megvii-model/ShuffleNet-Series (ShuffleNetV1/)

Follows megvii's release, the only ShuffleNet v1 with public weights and the source of the accuracies usually
quoted (68.0 % / 67.8 % top-1 for 1.0x g8 / g3). Where the paper is silent: the bottleneck is a quarter of the
unit's full output width (also in stride-2 units, whose branch only adds ``out - in`` channels), stage 2's first
1x1 conv is not grouped, there is no ReLU after the depthwise conv, the classifier has no bias, and the max-pool
after the stem pads by 1. Widths are Table 1's times the scale, each rounded to the nearest multiple of
4*groups (ties up); stems are 24 (1.0x, 1.5x), 48 (2.0x) and, at 0.5x and below, the smallest multiple of
``groups`` that is at least 12. This reproduces every released megvii model.

Channel shuffle, where megvii's code and the paper's text differ (``shuffle_order``):

- ``"megvii"`` (default): after the depthwise conv and its BN, just before the grouped expand conv, viewing
  the m bottleneck channels as (m/g, g) and transposing to (g, m/g). Outputs equal megvii's ``blocks.py``
  for every released model (``benchmarks/authors_equivalence.py``).
- ``"paper"``: right after the first grouped 1x1 conv, viewing the channels as (g, m/g) and transposing to
  (m/g, g), as the paper's text describes. The permutation is the inverse of megvii's. For g = 3 and for
  g = 8 at 2.0x the two orders are the same network up to a per-unit channel permutation; for g = 8 at 0.5x,
  1.0x and 1.5x (m/g not a multiple of 8) they connect groups differently and are different networks.

Either way the shuffle is a fixed permutation between two convs, so it stays as it is in the deploy form,
between the folded depthwise conv and the folded expand conv, and exports to ONNX as a reshape-transpose.

Weights of megvii's ``ShuffleNetV1/train.py`` (``{'state_dict': ...}`` with DataParallel's ``module.`` keys,
or the bare ``model.mdl``) load through ``create_model(name, checkpoint=PATH)``; :func:`checkpoint_filter_fn`
renames their keys. Their models expect BGR input in 0-255 with no mean/std normalisation (their README and
``train.py``), which ``AUTHORS_PRETRAINED_CFG`` records for ``lightnets eval``/``predict``/``export``.

CIFAR form: a stride-1 3x3 stem and no max-pool; each stage still halves, so stages run at 16, 8, 4.

Training stability (not architecture): with ``zero_init_last=True`` (the default) the BN after the expand conv
of every stride-1 unit starts with weight 0, so each residual unit starts as the identity (timm's
``zero_init_last``). With every BN weight at 1 the 12 residual additions add up full-variance branches and the
default recipe diverges in its first epoch (measured on CIFAR-10 at batch 128: the loss climbs from 2.3 to 23
while the warm-up lr is still 0.015-0.05; first-step gradient norm 4.5 against 0.8). Stride-2 units
concatenate their branch rather than add it, so they keep weight 1. Loaded weights replace this init.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lightnets.models.features import feature
from lightnets.models.layers import (
    ChannelShuffle,
    ClassifierModel,
    ConvBnAct,
    init_weights,
    zero_init_last_bn,
)
from lightnets.models.registry import register_model
from lightnets.models.weights import remap_state_dict

__all__ = ["ShuffleNetV1", "ShuffleUnit", "shufflenet_v1_widths"]

# Paper Table 1: output channels of stage 2 at 1x for each group count; stages 3 and 4 double it.
STAGE2_CHANNELS = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}
STAGE_REPEATS = (4, 8, 4)
SCALES = {"x0_25": 0.25, "x0_5": 0.5, "x1_0": 1.0, "x1_5": 1.5, "x2_0": 2.0}
SHUFFLE_ORDERS = ("megvii", "paper")


class ShuffleUnit(nn.Module):
    """Grouped 1x1 -> depthwise 3x3 -> shuffle -> grouped 1x1, with an identity or avg-pool shortcut.

    ``shuffle_order="paper"`` moves the shuffle before the depthwise conv and inverts its permutation (see the
    module docstring).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        groups: int,
        group_first_conv: bool = True,
        shuffle_order: str = "megvii",
    ) -> None:
        super().__init__()
        if shuffle_order not in SHUFFLE_ORDERS:
            raise ValueError(f"shuffle_order must be one of {SHUFFLE_ORDERS}, got {shuffle_order!r}")
        self.stride = stride
        self.groups = groups
        branch_out = out_channels - in_channels if stride == 2 else out_channels
        bottleneck = out_channels // 4
        self.conv_reduce = ConvBnAct(in_channels, bottleneck, 1, groups=groups if group_first_conv else 1)
        self.conv_dw = ConvBnAct(bottleneck, bottleneck, 3, stride=stride, groups=bottleneck, act_layer=None)
        self.conv_expand = ConvBnAct(bottleneck, branch_out, 1, groups=groups, act_layer=None)
        self.act = nn.ReLU(inplace=True)
        self.shuffle_before_dw = shuffle_order == "paper"
        # channel_shuffle(x, n) views the channels as (n, m/n): n = g is the paper's order, and n = m/g views
        # them as (m/g, g), megvii's, which is therefore the inverse permutation.
        self.shuffle: nn.Module = nn.Identity()
        if groups > 1:
            self.shuffle = ChannelShuffle(groups if self.shuffle_before_dw else bottleneck // groups)

    def zero_init_last(self) -> None:
        # Only a unit with a residual add starts as the identity; a stride-2 unit's concatenated branch would
        # start dead instead.
        if self.stride == 1:
            nn.init.zeros_(self.conv_expand.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_reduce(x)
        if self.shuffle_before_dw:  # the paper's placement
            out = self.shuffle(out)
        out = self.conv_dw(out)
        if not self.shuffle_before_dw:  # megvii's
            out = self.shuffle(out)
        out = self.conv_expand(out)
        if self.stride == 1:
            return self.act(out + x)
        shortcut = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1)
        return self.act(torch.cat([shortcut, out], dim=1))


@dataclass(frozen=True)
class ShuffleNetV1Config:
    groups: int
    scale: float

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return shufflenet_v1_widths(self.groups, self.scale)[1]

    @property
    def stem_channels(self) -> int:
        return shufflenet_v1_widths(self.groups, self.scale)[0]


def shufflenet_v1_widths(groups: int, scale: float) -> tuple[int, tuple[int, ...]]:
    """Stem and per-stage output widths for ``groups`` and ``scale`` (see the module docstring)."""
    if groups not in STAGE2_CHANNELS:
        raise ValueError(f"groups must be one of {sorted(STAGE2_CHANNELS)}, got {groups}")
    multiple = 4 * groups
    stages = tuple(
        max(multiple, math.floor(STAGE2_CHANNELS[groups] * 2**i * scale / multiple + 0.5) * multiple)
        for i in range(len(STAGE_REPEATS))
    )
    if scale <= 0.5:
        stem = math.ceil(12 / groups) * groups
    elif scale < 2.0:
        stem = 24
    else:
        stem = 48
    return stem, stages


class ShuffleNetV1(ClassifierModel):
    classifier_bias = False  # as released
    first_conv = "stem.conv"

    def __init__(
        self,
        config: ShuffleNetV1Config,
        num_classes: int = 1000,
        cifar: bool = False,
        drop_rate: float = 0.0,
        in_chans: int = 3,
        zero_init_last: bool = True,
        shuffle_order: str = "megvii",
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        self.default_input_size = 32 if cifar else 224
        self.in_chans = in_chans
        stem = config.stem_channels
        self.stem = ConvBnAct(in_chans, stem, 3, stride=1 if cifar else 2)
        self.stem_pool: nn.Module = nn.Identity() if cifar else nn.MaxPool2d(3, stride=2, padding=1)
        stages = []
        in_channels = stem
        for stage_index, (repeats, channels) in enumerate(zip(STAGE_REPEATS, config.stage_channels)):
            units = [
                ShuffleUnit(
                    in_channels if i == 0 else channels,
                    channels,
                    stride=2 if i == 0 else 1,
                    groups=config.groups,
                    # The stem is too narrow to split into groups (paper Table 1 footnote).
                    group_first_conv=not (stage_index == 0 and i == 0),
                    shuffle_order=shuffle_order,
                )
                for i in range(repeats)
            ]
            stages.append(nn.Sequential(*units))
            in_channels = channels
        self.stages = nn.Sequential(*stages)
        # Feature maps: the stem conv, the max-pool (ImageNet form only) and the three stages.
        stem_features = [feature("stem", stem, 2), feature("stem_pool", stem, 4)]
        self.feature_info = [feature("stem", stem, 1)] if cifar else stem_features
        self.feature_info += [
            feature(f"stages.{i}", c, (1 if cifar else 4) * 2 ** (i + 1)) for i, c in enumerate(config.stage_channels)
        ]
        self.num_features = self.head_hidden_size = in_channels
        self.drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes, global_pool)
        init_weights(self)
        if zero_init_last:
            zero_init_last_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_pool(self.stem(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            for stage in self.stages:  # a stage at a time: its forward hooks (forward_intermediates) still run
                x = checkpoint(stage, x, use_reentrant=False)
            return x
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.global_pool(x))
        return x if pre_logits else self.classifier(x)


# megvii's train.py: BGR, 0-255, no normalisation (ToBGRTensor); OpenCV resize to 256, centre crop 224.
# In lightnets' terms, x = (pixel / 255 - mean) / std, so mean 0 and std 1/255 leave the 0-255 values as they are.
AUTHORS_PRETRAINED_CFG = {
    "source": "megvii-model/ShuffleNet-Series (ShuffleNetV1/train.py)",
    "mean": (0.0, 0.0, 0.0),
    "std": (1 / 255, 1 / 255, 1 / 255),
    "channel_order": "BGR",
    "input_size": 224,
    "crop_pct": 0.875,
    "interpolation": "bilinear",
}


def authors_key_map(model: ShuffleNetV1) -> dict[str, str]:
    """The megvii name of every key of ``model``'s state dict (their ``network.py`` / ``blocks.py``)."""
    # megvii numbers the units of all stages in one Sequential, ``features``.
    units = [f"{s}.{u}" for s, stage in enumerate(model.stages) for u in range(len(stage))]
    layer = {  # our submodule -> megvii's, inside a unit
        "conv_reduce.conv": "branch_main_1.0",
        "conv_reduce.bn": "branch_main_1.1",
        "conv_dw.conv": "branch_main_1.3",
        "conv_dw.bn": "branch_main_1.4",
        "conv_expand.conv": "branch_main_2.0",
        "conv_expand.bn": "branch_main_2.1",
    }
    names = {}
    for key in model.state_dict():
        if key.startswith("stem."):
            names[key] = key.replace("stem.conv.", "first_conv.0.").replace("stem.bn.", "first_conv.1.")
        elif key.startswith("classifier."):
            names[key] = "classifier.0." + key.split(".", 1)[1]
        else:
            _, stage, unit, module, part, leaf = key.split(".")
            names[key] = f"features.{units.index(f'{stage}.{unit}')}.{layer[f'{module}.{part}']}.{leaf}"
    return names


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: ShuffleNetV1) -> dict[str, torch.Tensor]:
    """Rename megvii's keys (``module.`` already stripped) to lightnets'; lightnets' own keys pass unchanged."""
    if "first_conv.0.weight" not in state_dict:
        return state_dict
    return remap_state_dict(state_dict, model, authors_key_map(model))


def _create_shufflenet_v1(groups: int, scale: str, cifar: bool = False, **kwargs) -> ShuffleNetV1:
    kwargs.setdefault("num_classes", 10 if cifar else 1000)
    return ShuffleNetV1(ShuffleNetV1Config(groups=groups, scale=SCALES[scale]), cifar=cifar, **kwargs)


def _register(groups: int, scale: str, cifar: bool) -> None:
    """Register ``shufflenet_v1_g{groups}_{scale}[_cifar]``: the 5 x 5 grid of group counts and scales, each in
    ImageNet and CIFAR form, is 50 builders that differ only in these three values."""
    name = f"shufflenet_v1_g{groups}_{scale}" + ("_cifar" if cifar else "")

    def builder(**kwargs) -> ShuffleNetV1:
        return _create_shufflenet_v1(groups, scale, cifar=cifar, **kwargs)

    builder.__name__ = builder.__qualname__ = name
    form = "CIFAR form (32x32, 10 classes)" if cifar else "ImageNet form (224x224, 1000 classes)"
    builder.__doc__ = f"ShuffleNet v1 {SCALES[scale]}x, {groups} groups, {form}."
    register_model(builder)


for _groups in STAGE2_CHANNELS:
    for _scale in SCALES:
        for _cifar in (False, True):
            _register(_groups, _scale, _cifar)
