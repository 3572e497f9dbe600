"""ParNet: Non-deep Networks.

A. Goyal, A. Bochkovskiy, J. Deng, V. Koltun, "Non-deep Networks", arXiv 2110.07641.
https://arxiv.org/abs/2110.07641
Authors' code: https://github.com/imankgoyal/NonDeepNetworks

A depth-12 network of three parallel streams at 1/8, 1/16 and 1/32 of the input resolution (ImageNet),
built from RepVGG-style blocks with a Skip-Squeeze-Excitation (SSE) branch and merged by fusion blocks.

Where the paper's figures and the released code differ, this follows the released code:

- the sigmoid gate of downsampling and fusion blocks (the blocks without an identity branch) is scaled
  by 2, so it lies in (0, 2); the figure shows a plain sigmoid;
- every grouped block (the two fusion blocks) ends with a 2-group channel shuffle, not in the figure;
- a fusion block interleaves its two inputs channel by channel (a0, b0, a1, b1, ...), so each group of
  its 2-group convs sees half of each input;
- the last fusion block (depth 10) keeps stride 1 on ImageNet, so stream 3 and the fusion run at 14x14;
- ParNet-S uses C1 = 92 as in the released configs; the paper's table says 96 (``widths=`` overrides).

Structural choices that reproduce the released code's parameter and MAC counts exactly: only the two
fusion blocks are grouped (groups 2); all other downsampling blocks, including stream 1's C1 -> C2 and
the final C3 -> C_last, are ordinary convs. The depth-1 block has min(64, C1) channels. Gate convs have
no bias. The SSE gate is computed from the identity-BN output. In the deploy form each block is a single
conv with bias (the 1x1 branch and, for stride 2, the avg-pool + 1x1 branch are folded into the 3x3);
the identity-BN x SSE branch and the two input BNs of each fusion block stay as they are.

Activation (``act_layer``): ``"silu"`` (default) is the paper's, and what the released configs mean to select
(``additional_branches: swish``). ``"relu"`` is what the released code actually runs: its yamls nest the list
(``[['swish']]``), so its test ``'swish' in additional_branches`` is False and every block gets ReLU. Weights
trained with that code, such as the released checkpoints, need ``act_layer="relu"``; with it, lightnets' outputs
equal the authors' (``benchmarks/authors_equivalence.py``).

The authors' timm ``CheckpointSaver`` files load through ``create_model(name, checkpoint=PATH, act_layer="relu")``
(``state_dict``, as their ``validate.py``; ``state_dict_ema`` with ``ema=True``), :func:`checkpoint_filter_fn`
renaming the keys; their inputs take timm's ImageNet preprocessing (``AUTHORS_PRETRAINED_CFG``). Downsampling
blocks need even input sizes (the avg-pool and the stride-2 conv must agree), which holds at 224 and 32.

CIFAR form: the first two downsampling blocks (depths 1 and 2) have stride 1, so the streams run at
32, 16 and 8 pixels and the final downsampling block ends at 4x4.

Initialisation: ParNet has no ``zero_init_last``. Its blocks have no residual add of a branch onto its input
(the SSE branch is a gated BN of the input, always on, and downsampling and fusion blocks have no skip), and
it measured stable without one: on CIFAR-10 at the default recipe no step's loss rose above 2.32 and the
first-step gradient norm was 1.1. Starting the 3x3 and 1x1 branch BNs of the stream blocks at 0 instead made
the first epoch worse (19.8 % against 24.3 % test top-1, widths (32, 64, 128, 512)).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lightnets.models.features import feature
from lightnets.models.layers import ChannelShuffle, ClassifierModel, ConvBnAct, init_weights, pad_kernel_to
from lightnets.models.registry import register_model
from lightnets.models.weights import remap_state_dict

__all__ = ["ParNet", "ParNetBlock", "ParNetConfig", "ParNetDownsample", "ParNetFusion"]


def _fused_kernel(branch: ConvBnAct) -> tuple[torch.Tensor, torch.Tensor]:
    # Idempotent: the deploy pass reaches children first, so the BN may already be folded.
    branch.reparameterize()
    return branch.conv.weight.detach(), branch.conv.bias.detach()


def _fold_branches(conv3x3: ConvBnAct, conv1x1: ConvBnAct, pooled: bool) -> nn.Conv2d:
    """One 3x3 conv with bias equal to ``conv3x3(x) + conv1x1(x)`` (or ``conv1x1(avg_pool2(x))``)."""
    weight3, bias3 = _fused_kernel(conv3x3)
    weight1, bias1 = _fused_kernel(conv1x1)
    # A 3x3/s2/pad1 window at output i covers input rows 2i-1..2i+1 and the 2x2 avg-pool covers 2i..2i+1,
    # so the pooled 1x1 is the 1x1 weight spread over the bottom-right 2x2, divided by 4.
    weight1 = F.pad(weight1.expand(-1, -1, 2, 2) / 4, [1, 0, 1, 0]) if pooled else pad_kernel_to(weight1, 3)
    reference = conv3x3.conv
    fused = nn.Conv2d(
        reference.in_channels,
        reference.out_channels,
        3,
        stride=reference.stride,
        padding=reference.padding,
        groups=reference.groups,
        bias=True,
    ).to(device=weight3.device, dtype=weight3.dtype)
    with torch.no_grad():
        fused.weight.copy_(weight3 + weight1)
        fused.bias.copy_(bias3 + bias1)
    return fused


class ParNetBlock(nn.Module):
    """RepVGG-SSE block (stride 1, C -> C): SiLU(BN(conv3x3(x)) + BN(conv1x1(x)) + SSE(x)).

    SSE(x) = b * sigmoid(W GAP(b)) with b = BN(x) and W one bias-free 1x1 conv C -> C (no reduction).
    """

    def __init__(self, channels: int, act_layer: type[nn.Module] = nn.SiLU) -> None:
        super().__init__()
        self.conv3x3 = ConvBnAct(channels, channels, 3, act_layer=None)
        self.conv1x1 = ConvBnAct(channels, channels, 1, act_layer=None)
        self.sse_bn = nn.BatchNorm2d(channels)
        self.sse_gate = nn.Conv2d(channels, channels, 1, bias=False)
        self.act = act_layer()
        self.conv_reparam: nn.Conv2d | None = None

    def _conv_branches(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_reparam is not None:
            return self.conv_reparam(x)
        return self.conv3x3(x) + self.conv1x1(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._conv_branches(x)
        skip = self.sse_bn(x)
        gate = torch.sigmoid(self.sse_gate(skip.mean((2, 3), keepdim=True)))
        return self.act(out + skip * gate)

    def reparameterize(self) -> None:
        if self.conv_reparam is not None:
            return
        self.conv_reparam = _fold_branches(self.conv3x3, self.conv1x1, pooled=False)
        del self.conv3x3, self.conv1x1


class ParNetDownsample(nn.Module):
    """Downsampling block: SiLU((BN(conv1x1(avgpool(x))) + BN(conv3x3_s2(x))) * 2 sigmoid(W GAP(x))).

    With stride 1 the avg-pool is dropped (the last fusion block and the CIFAR form's early blocks).
    With groups > 1 all three convs are grouped and the output is channel-shuffled.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 2,
        groups: int = 1,
        act_layer: type[nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ParNetDownsample supports stride 1 or 2, got {stride}")
        self.stride = stride
        self.pool: nn.Module = nn.AvgPool2d(2) if stride == 2 else nn.Identity()
        self.conv1x1 = ConvBnAct(in_channels, out_channels, 1, groups=groups, act_layer=None)
        self.conv3x3 = ConvBnAct(in_channels, out_channels, 3, stride=stride, groups=groups, act_layer=None)
        self.gate = nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=False)
        self.act = act_layer()
        self.shuffle: nn.Module = ChannelShuffle(groups) if groups > 1 else nn.Identity()
        self.conv_reparam: nn.Conv2d | None = None

    def _conv_branches(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_reparam is not None:
            return self.conv_reparam(x)
        return self.conv1x1(self.pool(x)) + self.conv3x3(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._conv_branches(x)
        # The released code scales the gate by 2 in blocks that have no identity branch.
        gate = 2.0 * torch.sigmoid(self.gate(x.mean((2, 3), keepdim=True)))
        return self.shuffle(self.act(out * gate))

    def reparameterize(self) -> None:
        if self.conv_reparam is not None:
            return
        self.conv_reparam = _fold_branches(self.conv3x3, self.conv1x1, pooled=self.stride == 2)
        del self.pool, self.conv1x1, self.conv3x3


class ParNetFusion(nn.Module):
    """Fusion of two C-channel inputs: BN each, interleave channels, then a 2-group downsampling block.

    ``direct`` is the stream feeding this fusion directly, ``side`` the path arriving from the
    higher-resolution side; the interleaved order is direct0, side0, direct1, side1, ...
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 2, act_layer: type[nn.Module] = nn.SiLU
    ) -> None:
        super().__init__()
        self.bn_direct = nn.BatchNorm2d(in_channels)
        self.bn_side = nn.BatchNorm2d(in_channels)
        self.block = ParNetDownsample(2 * in_channels, out_channels, stride=stride, groups=2, act_layer=act_layer)

    def forward(self, direct: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        x = torch.stack([self.bn_direct(direct), self.bn_side(side)], dim=2).flatten(1, 2)
        return self.block(x)


# "silu": the paper (and the released configs' intent); "relu": the released code as it runs (module docstring).
ACT_LAYERS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU}


@dataclass(frozen=True)
class ParNetConfig:
    # (C1, C2, C3, C_last): stream 1, 2 and 3 widths and the final downsampling block's width.
    widths: tuple[int, int, int, int]
    drop_rate: float = 0.0
    stream_depths: tuple[int, int, int] = (4, 5, 5)
    stem_width: int = 64

    def __post_init__(self) -> None:
        if len(self.widths) != 4:
            raise ValueError(f"ParNet widths are (C1, C2, C3, C_last), got {self.widths}")
        if len(self.stream_depths) != 3:
            raise ValueError(f"ParNet has three streams, got stream_depths {self.stream_depths}")


class ParNet(ClassifierModel):
    # The first block reads the image in three branches: 1x1 (after pooling), 3x3, and the gate's 1x1.
    first_conv = ("stem.0.conv1x1.conv", "stem.0.conv3x3.conv", "stem.0.gate")

    def __init__(
        self,
        config: ParNetConfig,
        num_classes: int = 1000,
        cifar: bool = False,
        drop_rate: float | None = None,
        in_chans: int = 3,
        act_layer: str = "silu",
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        if act_layer not in ACT_LAYERS:
            raise ValueError(f"act_layer must be one of {sorted(ACT_LAYERS)}, got {act_layer!r}")
        self.act_layer = act_layer
        act = ACT_LAYERS[act_layer]
        self.default_input_size = 32 if cifar else 224
        c1, c2, c3, c_last = config.widths
        depth1, depth2, depth3 = config.stream_depths
        stem_width = min(config.stem_width, c1)
        early_stride = 1 if cifar else 2
        # Depths 1-4: a chain of downsampling blocks whose outputs at depths 2, 3, 4 feed streams 1, 2, 3.
        self.stem = nn.Sequential(
            ParNetDownsample(in_chans, stem_width, stride=early_stride, act_layer=act),
            ParNetDownsample(stem_width, c1, stride=early_stride, act_layer=act),
        )
        self.down_to_stream2 = ParNetDownsample(c1, c2, act_layer=act)
        self.down_to_stream3 = ParNetDownsample(c2, c3, act_layer=act)
        self.stream1 = nn.Sequential(
            *[ParNetBlock(c1, act) for _ in range(depth1)], ParNetDownsample(c1, c2, act_layer=act)
        )
        self.stream2 = nn.Sequential(*[ParNetBlock(c2, act) for _ in range(depth2)])
        self.stream3 = nn.Sequential(*[ParNetBlock(c3, act) for _ in range(depth3)])
        self.fuse2 = ParNetFusion(c2, c3, stride=2, act_layer=act)
        self.fuse3 = ParNetFusion(c3, c3, stride=1, act_layer=act)
        self.final_down = ParNetDownsample(c3, c_last, act_layer=act)
        # Feature maps: the stem blocks, then the streams' outputs (stream 1's after its C1 -> C2 downsampling) and
        # the fusions' (fuse2: streams 1 and 2; fuse3: that and stream 3), then the final downsampling block.
        r = early_stride
        self.feature_info = [feature("stem.0", stem_width, r), feature("stem.1", c1, r * r)]
        self.feature_info += [feature("stream1", c2, 2 * r * r), feature("stream2", c2, 2 * r * r)]
        self.feature_info += [feature(name, c3, 4 * r * r) for name in ("fuse2", "stream3", "fuse3")]
        self.feature_info.append(feature("final_down", c_last, 8 * r * r))
        self.num_features = self.head_hidden_size = c_last
        self.drop = nn.Dropout(config.drop_rate if drop_rate is None else drop_rate)
        self.reset_classifier(num_classes, global_pool)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.stem(x)
        x2 = self.down_to_stream2(x1)
        x3 = self.down_to_stream3(x2)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            # A stream at a time: its forward hooks (forward_intermediates) still run.
            fused = self.fuse2(
                checkpoint(self.stream2, x2, use_reentrant=False), checkpoint(self.stream1, x1, use_reentrant=False)
            )
            fused = self.fuse3(checkpoint(self.stream3, x3, use_reentrant=False), fused)
        else:
            fused = self.fuse2(self.stream2(x2), self.stream1(x1))
            fused = self.fuse3(self.stream3(x3), fused)
        return self.final_down(fused)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.global_pool(x))
        return x if pre_logits else self.classifier(x)


PARNET_CONFIGS: dict[str, ParNetConfig] = {
    "s": ParNetConfig(widths=(92, 192, 384, 1280)),
    "m": ParNetConfig(widths=(128, 256, 512, 2048)),
    "l": ParNetConfig(widths=(160, 320, 640, 2560), drop_rate=0.1),
    "xl": ParNetConfig(widths=(200, 400, 800, 3200), drop_rate=0.1),
}


# timm's defaults for the authors' SimpNet (simplenet.py, _cfg_224): ImageNet mean/std, crop 0.875, bilinear.
AUTHORS_PRETRAINED_CFG = {
    "source": "imankgoyal/NonDeepNetworks (imagenet/train.py, timm CheckpointSaver)",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "channel_order": "RGB",
    "input_size": 224,
    "crop_pct": 0.875,
    "interpolation": "bilinear",
}

# Inside a block: our submodule -> the authors' (RepVGGBlock in simplenet_impl/repvgg.py).
_BLOCK_KEYS = {
    "conv3x3.conv": "rbr_dense.conv",
    "conv3x3.bn": "rbr_dense.bn",
    "sse_bn": "rbr_identity",
    "sse_gate": "se.cvsig.conv",
    "gate": "se.cvsig.conv",
}


def _authors_modules(model: ParNet) -> dict[str, str]:
    """Our block or BN prefix -> the authors' module path in SimpNet (simplenet_impl/simpnet.py)."""
    depth1 = len(model.stream1) - 1  # stream 1 ends with its C1 -> C2 downsampling block
    modules = {
        "stem.0": "inits.0.0.block",
        "stem.1": "inits.0.1.block",
        "down_to_stream2": "inits.1.block",
        "down_to_stream3": "inits.2.block",
        f"stream1.{depth1}": "downsamples_2.0.block",
        "fuse2.bn_direct": "downsamples_2.1.0.b1",
        "fuse2.bn_side": "downsamples_2.1.0.b2",
        "fuse2.block": "downsamples_2.1.2.block",
        "fuse3.bn_direct": "combine.0.b1",
        "fuse3.bn_side": "combine.0.b2",
        "fuse3.block": "combine.2.block",
        "final_down": "combine.3.block",
        "classifier": "head.fc",
    }
    for stream_index, stream in enumerate((model.stream1, model.stream2, model.stream3)):
        for i, block in enumerate(stream):
            if isinstance(block, ParNetBlock):
                modules[f"stream{stream_index + 1}.{i}"] = f"streams.{stream_index}.{i}.block"
    return modules


def authors_key_map(model: ParNet) -> dict[str, str]:
    """The authors' name of every key of ``model``'s state dict (training form)."""
    modules = _authors_modules(model)
    blocks = dict(model.named_modules())
    names = {}
    for key in model.state_dict():
        prefix = max((p for p in modules if key.startswith(p + ".")), key=len)
        rest = key[len(prefix) + 1 :]
        block = blocks[prefix]
        if rest.startswith("conv1x1."):
            # A stride-2 block's 1x1 branch is Sequential(AvgPool2d, conv_bn) in their code, hence the ".1".
            pooled = isinstance(block, ParNetDownsample) and block.stride == 2
            theirs = ("rbr_1x1.1." if pooled else "rbr_1x1.") + rest[len("conv1x1.") :]
        else:
            inner = max((p for p in _BLOCK_KEYS if rest.startswith(p + ".")), key=len, default=None)
            theirs = rest if inner is None else _BLOCK_KEYS[inner] + rest[len(inner) :]
        names[key] = f"{modules[prefix]}.{theirs}"
    return names


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: ParNet) -> dict[str, torch.Tensor]:
    """Rename the authors' keys (``module.`` already stripped) to lightnets'; lightnets' own keys pass unchanged.

    The file does not say which activation it was trained with; the released code runs ReLU (module docstring),
    so a SiLU model gets a warning.
    """
    if "inits.0.0.block.rbr_dense.conv.weight" not in state_dict:
        return state_dict
    if model.act_layer != "relu":
        warnings.warn(
            "loading weights of the authors' ParNet code into a SiLU ParNet: their released code runs ReLU blocks, "
            "so weights it trained need act_layer='relu'",
            stacklevel=2,
        )
    return remap_state_dict(state_dict, model, authors_key_map(model))


def _create_parnet(variant: str, cifar: bool = False, **kwargs) -> ParNet:
    config = PARNET_CONFIGS[variant]
    # widths=(C1, C2, C3, C_last) overrides the variant, e.g. the paper's C1 = 96 for ParNet-S.
    if "widths" in kwargs:
        config = replace(config, widths=tuple(kwargs.pop("widths")))
    kwargs.setdefault("num_classes", 10 if cifar else 1000)
    return ParNet(config, cifar=cifar, **kwargs)


def _register(variant: str, cifar: bool) -> None:
    """Register ``parnet_{variant}[_cifar]``: the four sizes in ImageNet and CIFAR form differ only in these."""
    name = f"parnet_{variant}" + ("_cifar" if cifar else "")

    def builder(**kwargs) -> ParNet:
        return _create_parnet(variant, cifar=cifar, **kwargs)

    builder.__name__ = builder.__qualname__ = name
    form = "CIFAR form (32x32, 10 classes)" if cifar else "ImageNet form (224x224, 1000 classes)"
    builder.__doc__ = f"ParNet-{variant.upper()}, {form}."
    register_model(builder)


for _variant in PARNET_CONFIGS:
    for _cifar in (False, True):
        _register(_variant, _cifar)
