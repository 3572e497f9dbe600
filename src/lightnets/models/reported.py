"""ImageNet top-1 as the papers report it, with where each figure comes from.

Single 224x224 centre crop (from 256) unless the source says otherwise. These are the authors' figures for their
own training, not anything measured here; ``lightnets bench --pareto`` plots them against the latency it measures.
Figures and sources are those of ../shared/specs/architectures.md (sections 2.4, 3.7, 4.4 and 5), except the two
baselines marked below. SPGNet has none: its paper's tables could not be found in any public source (spec 1.8).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PAPER_CLAIMS", "REPORTED_TOP1", "PaperClaim", "ReportedTop1"]


@dataclass(frozen=True)
class ReportedTop1:
    top1: float  # ImageNet-1k, %
    source: str  # paper and table (or the page the figure was read from)


REPORTED_TOP1: dict[str, ReportedTop1] = {
    # model name: top-1 %, source
    "shufflenet_v1_g3_x1_0": ReportedTop1(67.4, "ShuffleNet (Zhang et al., CVPR 2018) Table 2: 1x g=3 error 32.6 %"),
    "shufflenet_v1_g8_x1_0": ReportedTop1(67.6, "ShuffleNet (Zhang et al., CVPR 2018) Table 2: 1x g=8 error 32.4 %"),
    "shufflenet_v1_g3_x0_5": ReportedTop1(56.8, "ShuffleNet (Zhang et al., CVPR 2018) Table 2: 0.5x g=3 error 43.2 %"),
    "parnet_s": ReportedTop1(75.2, "Non-deep Networks (Goyal et al.), the repository's accuracy-vs-depth figure "
                                   "img/parnet.png, read off at depth 12 (+-0.1)"),
    "parnet_m": ReportedTop1(76.6, "Non-deep Networks (Goyal et al.), img/parnet.png at depth 12 (+-0.1)"),
    "asymmnet_large_x1_0": ReportedTop1(75.4, "AsymmNet (Yang et al., CVPR-W 2021) as listed by Papers with Code; "
                                              "the released training log's best is 75.42 %"),
    "asymmnet_large_x0_5": ReportedTop1(69.2, "AsymmNet (Yang et al., CVPR-W 2021) as listed by Papers with Code"),
    "asymmnet_small_x1_0": ReportedTop1(68.4, "AsymmNet (Yang et al., CVPR-W 2021) as listed by Papers with Code"),
    "tv:mobilenet_v2": ReportedTop1(72.0, "MobileNetV2 (Sandler et al., CVPR 2018), as megvii's ShuffleNet-Series "
                                          "README quotes it (error 28.0 %)"),
    "tv:mobilenet_v3_large": ReportedTop1(75.2, "Searching for MobileNetV3 (Howard et al., ICCV 2019), as "
                                                "the TF-slim and megvii ShuffleNet-Series READMEs quote it"),
    "tv:shufflenet_v2_x1_0": ReportedTop1(69.4, "ShuffleNet V2 (Ma et al., ECCV 2018), megvii's ShuffleNet-Series "
                                                "README (error 30.6 %)"),
    "timm:ghostnet_100": ReportedTop1(73.9, "GhostNet (Han et al., CVPR 2020), huawei-noah "
                                            "Efficient-AI-Backbones README (error 26.07 % at 141 M MACs)"),
    # Not in the spec:
    "tv:resnet18": ReportedTop1(69.758, "torchvision's ResNet18_Weights.IMAGENET1K_V1 (acc@1 69.758); the ResNet "
                                        "paper gives no single-crop ResNet-18 figure"),
    "timm:efficientnet_b0": ReportedTop1(77.692, "torchvision's EfficientNet_B0_Weights.IMAGENET1K_V1, weights "
                                                 "ported from the EfficientNet paper's (acc@1 77.692)"),
}  # fmt: skip


@dataclass(frozen=True)
class PaperClaim:
    """A paper's claim that one network runs ``speedup`` times as fast as another (latency ratio)."""

    claim: str  # as the paper words it
    source: str
    fast: str  # model name
    slow: str
    speedup: float  # latency(slow) / latency(fast) the claim implies
    hardware: str  # where the paper measured it


PAPER_CLAIMS = (
    PaperClaim("120% faster than MobileNetV2 under similar FLOPs", "SPGNet (TMM 2021), abstract",
               "spgnet_s2p6", "tv:mobilenet_v2", 2.2, "an NPU (model not given)"),
    PaperClaim("over 300% faster than GhostNet with similar accuracy", "SPGNet (TMM 2021), abstract",
               "spgnet_s2p6", "timm:ghostnet_100", 4.0, "an NPU (model not given)"),
)  # fmt: skip
