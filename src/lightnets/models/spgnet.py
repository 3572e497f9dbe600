"""SPGNet: Serial and Parallel Group Network.

X. Wang, S. Lai, Z. Chai, X. Zhang, X. Qian, "SPGNet: Serial and Parallel Group Network",
IEEE Transactions on Multimedia 24:2804-2814, 2022. https://doi.org/10.1109/TMM.2021.3088639
Authors' code: https://github.com/xiaolai-sqlai/SPGNet_TMM2021

The block follows the released code (a 1x1 halving conv, two serial grouped 3x3 convs whose outputs
are concatenated, a linear 1x1 back to full width, residual, ReLU). It is generalised to serial depth
``serial_depth`` (S) and ``groups`` (P) so that the paper's three group-convolution types can be built
for ablation: serial group conv (P=1), parallel group conv (S=1) and serial-parallel (S=2, the default).

Checkpoints of the authors' code load through ``create_model(name, checkpoint=PATH)``: their training script's
``{'state_dict': ...}`` (DistributedDataParallel, ``module.`` keys), its separate EMA file ``{'state_dict_ema':
...}``, and the README's release layout ``{'state_dict': ...}`` with plain keys; :func:`checkpoint_filter_fn`
renames the keys. Their inputs are RGB in [0, 1] without mean/std normalisation (``ToTensor`` only, in
``train_dist_ema.py``), which ``AUTHORS_PRETRAINED_CFG`` records.

CIFAR form: both stem convs have stride 1, so the three stages run at 16, 8 and 4 pixels.

Training stability (not architecture): with ``zero_init_last=True`` (the default) the BN of every block's
``conv_out`` starts with weight 0, so each block starts as its shortcut (timm's ``zero_init_last``). The authors'
init means to do the same but its name test never matches, so their code starts every BN at 1; with that, the
15 residual additions give a first-step gradient norm of 41.6 (3.5 with the zero start) and, after one epoch of
the default recipe on CIFAR-10, a test loss of 83 at chance accuracy. Loaded weights replace this init.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lightnets.models.features import feature
from lightnets.models.layers import (
    ClassifierModel,
    ConvBnAct,
    fuse_linear_bn,
    init_weights,
    zero_init_last_bn,
)
from lightnets.models.registry import register_model
from lightnets.models.weights import remap_state_dict

__all__ = ["SPGBlock", "SPGNet", "SPGNetConfig"]


class SPGBlock(nn.Module):
    """Serial-parallel group block.

    1x1 conv Cin -> C/2; a chain of S grouped 3x3 convs (C/2 -> C/2, P groups, the first carrying the
    stride); the S chain outputs concatenated (receptive fields 3x3, 5x5, ...); a linear 1x1 conv
    S*C/2 -> C; plus a shortcut; ReLU after the add.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int, serial_depth: int = 2) -> None:
        super().__init__()
        if out_channels % 2 or (out_channels // 2) % groups:
            raise ValueError(f"SPGBlock needs out_channels/2 divisible by groups; got {out_channels} and {groups}")
        if serial_depth < 1:
            raise ValueError(f"serial_depth must be >= 1, got {serial_depth}")
        mid = out_channels // 2
        self.conv_in = ConvBnAct(in_channels, mid, 1)
        self.chain = nn.ModuleList(
            ConvBnAct(mid, mid, 3, stride=stride if i == 0 else 1, groups=groups) for i in range(serial_depth)
        )
        self.conv_out = ConvBnAct(serial_depth * mid, out_channels, 1, act_layer=None)
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        elif stride == 1:
            self.shortcut = ConvBnAct(in_channels, out_channels, 1, act_layer=None)
        else:
            # The released code downsamples the shortcut with a depthwise 3x3 before the 1x1 projection.
            self.shortcut = nn.Sequential(
                ConvBnAct(in_channels, in_channels, 3, stride=stride, groups=in_channels, act_layer=None),
                ConvBnAct(in_channels, out_channels, 1, act_layer=None),
            )
        self.act = nn.ReLU(inplace=True)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv_out.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_in(x)
        chain_outputs = []
        for conv in self.chain:
            out = conv(out)
            chain_outputs.append(out)
        out = self.conv_out(torch.cat(chain_outputs, dim=1) if len(chain_outputs) > 1 else out)
        return self.act(out + self.shortcut(x))


@dataclass(frozen=True)
class SPGNetConfig:
    groups: int
    serial_depth: int = 2
    stage_repeats: tuple[int, ...] = (4, 8, 3)
    head_channels: int = 1024

    @property
    def stem_channels(self) -> tuple[int, int]:
        return 2 * self.groups, 4 * self.groups

    @property
    def stage_channels(self) -> tuple[int, ...]:
        # Per-group width of the 3x3 convs is fixed at 8, 16, 32 channels in stages 1-3.
        return tuple(16 * self.groups * 2**i for i in range(len(self.stage_repeats)))


class SPGNet(ClassifierModel):
    classifier_bias = False  # as released
    first_conv = "stem.0.conv"

    def __init__(
        self,
        config: SPGNetConfig,
        num_classes: int = 1000,
        cifar: bool = False,
        drop_rate: float = 0.2,
        in_chans: int = 3,
        zero_init_last: bool = True,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        self.default_input_size = 32 if cifar else 224
        self.in_chans = in_chans
        stem1, stem2 = config.stem_channels
        stem_stride = 1 if cifar else 2
        self.stem = nn.Sequential(
            ConvBnAct(in_chans, stem1, 3, stride=stem_stride),
            ConvBnAct(stem1, stem2, 3, stride=stem_stride),
        )
        stages = []
        in_channels = stem2
        for repeats, channels in zip(config.stage_repeats, config.stage_channels):
            blocks = [
                SPGBlock(
                    in_channels if i == 0 else channels,
                    channels,
                    2 if i == 0 else 1,
                    config.groups,
                    config.serial_depth,
                )
                for i in range(repeats)
            ]
            stages.append(nn.Sequential(*blocks))
            in_channels = channels
        self.stages = nn.Sequential(*stages)
        # Feature maps: both stem convs and the three stages (the head's 1x1 conv_head is not one).
        self.feature_info = [feature("stem.0", stem1, stem_stride), feature("stem.1", stem2, stem_stride**2)]
        self.feature_info += [
            feature(f"stages.{i}", c, stem_stride**2 * 2 ** (i + 1)) for i, c in enumerate(config.stage_channels)
        ]
        self.conv_head = ConvBnAct(in_channels, config.head_channels, 1)
        self.num_features = self.head_hidden_size = config.head_channels
        # Classifier as released: FC -> BN -> ReLU -> dropout -> FC, both FCs without bias.
        self.pre_logits = nn.Linear(self.num_features, self.head_hidden_size, bias=False)
        self.pre_logits_bn: nn.Module = nn.BatchNorm1d(self.head_hidden_size)
        self.pre_logits_act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes, global_pool)
        init_weights(self)
        if zero_init_last:
            zero_init_last_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            for stage in self.stages:  # a stage at a time: its forward hooks (forward_intermediates) still run
                x = checkpoint(stage, x, use_reentrant=False)
        else:
            x = self.stages(x)
        return self.conv_head(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool.pool_type == "":
            # Unpooled (global_pool=''): the FC -> BN -> ReLU pre-logits run at every position of the map.
            n, _, h, w = x.shape
            x = x.permute(0, 2, 3, 1).reshape(n * h * w, -1)
            x = self.pre_logits_act(self.pre_logits_bn(self.pre_logits(x)))
            x = x.reshape(n, h, w, -1).permute(0, 3, 1, 2)
        else:
            x = self.pre_logits_act(self.pre_logits_bn(self.pre_logits(self.global_pool(x))))
        x = self.drop(x)
        return x if pre_logits else self.classifier(x)

    def reparameterize(self) -> None:
        if isinstance(self.pre_logits_bn, nn.BatchNorm1d):
            self.pre_logits = fuse_linear_bn(self.pre_logits, self.pre_logits_bn)
            self.pre_logits_bn = nn.Identity()


SPGNET_CONFIGS: dict[str, SPGNetConfig] = {f"s2p{p}": SPGNetConfig(groups=p) for p in (6, 7, 8, 9)}


# train_dist_ema.py evaluates Resize(256) -> CenterCrop(224) -> ToTensor(): RGB in [0, 1], no normalisation.
AUTHORS_PRETRAINED_CFG = {
    "source": "xiaolai-sqlai/SPGNet_TMM2021 (train_dist_ema.py)",
    "mean": (0.0, 0.0, 0.0),
    "std": (1.0, 1.0, 1.0),
    "channel_order": "RGB",
    "input_size": 224,
    "crop_pct": 0.875,
    "interpolation": "bilinear",
}

# Our name -> the authors' (network/spgnet.py), for the parts outside the blocks and inside a block.
_TOP_KEYS = {"conv_head": "conv_last", "pre_logits_bn": "bn", "pre_logits": "fc", "classifier": "linear"}
_BLOCK_KEYS = {"chain.0": "conv1", "chain.1": "conv2", "conv_in": "conv_in", "conv_out": "conv_out"}
# The shortcut: stride 1, a ConvBnAct; stride 2, Sequential(depthwise ConvBnAct, ConvBnAct). Theirs is one
# Sequential of bare convs and BNs.
_SHORTCUT_KEYS = {
    "shortcut.conv": "skip.0",
    "shortcut.bn": "skip.1",
    "shortcut.0.conv": "skip.0",
    "shortcut.0.bn": "skip.1",
    "shortcut.1.conv": "skip.2",
    "shortcut.1.bn": "skip.3",
}


def authors_key_map(model: SPGNet) -> dict[str, str]:
    """The authors' name of every key of ``model``'s state dict; their block has exactly two serial convs."""
    blocks = [f"stages.{s}.{b}." for s, stage in enumerate(model.stages) for b in range(len(stage))]
    names = {}
    for key in model.state_dict():
        module, leaf = key.rsplit(".", 1)
        if key.startswith("stem."):
            names[key] = "first_conv." + key[len("stem.") :]
        elif key.startswith("stages."):
            block = next(b for b in blocks if key.startswith(b))
            inner = module[len(block) :]
            part = next((p for p in _BLOCK_KEYS if inner.startswith(p + ".")), None)
            if inner in _SHORTCUT_KEYS:
                theirs = _SHORTCUT_KEYS[inner]  # bare convs and BNs: no ".conv" / ".bn" level below
            elif part is not None:
                theirs = _BLOCK_KEYS[part] + inner[len(part) :]
            else:
                # Only the S=2 block exists in the authors' code; a deeper chain has no counterpart.
                raise ValueError(f"the authors' SPGNet has no counterpart of {key} (serial_depth must be 2)")
            names[key] = f"layers.{blocks.index(block)}.{theirs}.{leaf}"
        else:
            top = module.split(".", 1)[0]
            names[key] = f"{_TOP_KEYS[top]}{module[len(top) :]}.{leaf}"
    return names


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: SPGNet) -> dict[str, torch.Tensor]:
    """Rename the authors' keys (``module.`` already stripped) to lightnets'; lightnets' own keys pass unchanged."""
    if "first_conv.0.conv.weight" not in state_dict:
        return state_dict
    return remap_state_dict(state_dict, model, authors_key_map(model))


def _create_spgnet(variant: str, cifar: bool = False, **kwargs) -> SPGNet:
    config = SPGNET_CONFIGS[variant]
    # groups / serial_depth override the variant, e.g. serial_depth=1 for the parallel-group ablation.
    config = replace(config, **{k: kwargs.pop(k) for k in ("groups", "serial_depth") if k in kwargs})
    kwargs.setdefault("num_classes", 10 if cifar else 1000)
    return SPGNet(config, cifar=cifar, **kwargs)


@register_model
def spgnet_s2p6(**kwargs) -> SPGNet:
    return _create_spgnet("s2p6", **kwargs)


@register_model
def spgnet_s2p7(**kwargs) -> SPGNet:
    return _create_spgnet("s2p7", **kwargs)


@register_model
def spgnet_s2p8(**kwargs) -> SPGNet:
    return _create_spgnet("s2p8", **kwargs)


@register_model
def spgnet_s2p9(**kwargs) -> SPGNet:
    return _create_spgnet("s2p9", **kwargs)


@register_model
def spgnet_s2p6_cifar(**kwargs) -> SPGNet:
    return _create_spgnet("s2p6", cifar=True, **kwargs)


@register_model
def spgnet_s2p7_cifar(**kwargs) -> SPGNet:
    return _create_spgnet("s2p7", cifar=True, **kwargs)


@register_model
def spgnet_s2p8_cifar(**kwargs) -> SPGNet:
    return _create_spgnet("s2p8", cifar=True, **kwargs)


@register_model
def spgnet_s2p9_cifar(**kwargs) -> SPGNet:
    return _create_spgnet("s2p9", cifar=True, **kwargs)
