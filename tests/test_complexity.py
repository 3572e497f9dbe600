"""Parameter and MAC counts against the reference table of ../shared/specs/architectures.md (Part 1)."""

import pytest

import lightnets

from .conftest import every_model

# name: (params M, deploy params M or None, MACs M of the deploy form). For ParNet the training form's
# MACs are checked too. Copied from the spec's reference table, which was measured on the authors' code.
REFERENCE = {
    "spgnet_s2p6": (4.280, None, 294.1),
    "spgnet_s2p7": (4.882, None, 379.1),
    "spgnet_s2p8": (5.551, None, 474.5),
    "spgnet_s2p9": (6.288, None, 580.3),
    "shufflenet_v1_g1_x1_0": (1.53, None, 143.1),
    "shufflenet_v1_g2_x1_0": (1.73, None, 140.8),
    "shufflenet_v1_g3_x0_5": (0.717, None, 37.6),
    "shufflenet_v1_g3_x1_0": (1.865, None, 137.5),
    "shufflenet_v1_g3_x1_5": (3.441, None, 292.4),
    "shufflenet_v1_g3_x2_0": (5.450, None, 524.0),
    "shufflenet_v1_g4_x1_0": (1.97, None, 134.3),
    "shufflenet_v1_g8_x0_5": (1.010, None, 40.5),
    "shufflenet_v1_g8_x1_0": (2.434, None, 138.4),
    "shufflenet_v1_g8_x1_5": (4.269, None, 290.2),
    "shufflenet_v1_g8_x2_0": (6.521, None, 521.9),
    "parnet_s": (20.931, 19.129, 4733.9),
    "parnet_m": (38.953, 35.577, 8581.9),
    "parnet_l": (60.180, 54.915, 13324.1),
    "parnet_xl": (93.176, 84.963, 20715.6),
    "asymmnet_large_x1_0": (6.077, None, 216.9),
    "asymmnet_large_x0_75": (4.29, None, 142.1),
    "asymmnet_large_x0_5": (2.845, None, 67.2),
    "asymmnet_large_x0_35": (2.21, None, 42.6),
    "asymmnet_small_x1_0": (3.132, None, 57.7),
    "asymmnet_small_x0_75": (2.50, None, 40.8),
    "asymmnet_small_x0_5": (1.964, None, 20.6),
    "asymmnet_small_x0_35": (1.74, None, 15.2),
    "spgnet_s2p6_cifar": (3.27, None, 95.0),
}
PARNET_TRAINING_MACS = {"parnet_s": 5259.5, "parnet_m": 9534.8, "parnet_l": 14803.7, "parnet_xl": 23016.1}
BASELINES = {
    "tv:mobilenet_v2": (3.505, 300.8),
    "tv:mobilenet_v3_large": (5.483, 216.6),
    "tv:shufflenet_v2_x1_0": (2.279, 144.9),
    "tv:resnet18": (11.690, 1814.1),
    "timm:ghostnet_100": (5.183, 141.2),
}


def within(value: float, reference: float, tolerance: float = 0.01) -> bool:
    return abs(value / reference - 1) <= tolerance


@pytest.mark.parametrize("name", every_model(list(REFERENCE)))
def test_reference_counts(name):
    params, deploy_params, macs = REFERENCE[name]
    stats = lightnets.complexity(lightnets.create_model(name))
    assert within(stats.params / 1e6, params), stats
    assert within(stats.deploy_macs / 1e6, macs), stats
    if deploy_params is not None:
        assert within(stats.deploy_params / 1e6, deploy_params), stats
    if name in PARNET_TRAINING_MACS:
        assert within(stats.macs / 1e6, PARNET_TRAINING_MACS[name]), stats
    else:
        assert stats.macs == stats.deploy_macs  # BN fusion removes no multiply-accumulates


@pytest.mark.parametrize("name", list(BASELINES))
def test_baseline_counts(name):
    params, macs = BASELINES[name]
    stats = lightnets.complexity(lightnets.create_model(name))
    assert within(stats.params / 1e6, params) and within(stats.macs / 1e6, macs), stats


def test_complexity_scales_with_input_and_classes():
    small = lightnets.complexity(lightnets.create_model("spgnet_s2p6_cifar"), 32)
    large = lightnets.complexity(lightnets.create_model("spgnet_s2p6_cifar"), 64)
    assert large.macs > 3.5 * small.macs - 1e6
    hundred = lightnets.complexity(lightnets.create_model("spgnet_s2p6_cifar", num_classes=100))
    assert hundred.params - small.params == 90 * 1024
