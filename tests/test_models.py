"""Every registered model: shape, backward, API, deploy-form equivalence."""

import pytest
import torch
from torch import nn

import lightnets
from lightnets.models.layers import ConvBnAct

from .conftest import every_model, randomize_batchnorm

ALL_MODELS = lightnets.list_models()
# Backward at 224 for the 20-90 M parameter ParNets is slow on a 2-core CI box; they take 64 px instead.
BACKWARD_SIZE = {name: 64 for name in ALL_MODELS if name.startswith("parnet_") and not name.endswith("_cifar")}


def test_registry_holds_every_family():
    expected = (
        [f"spgnet_s2p{p}" for p in (6, 7, 8, 9)]
        + [f"shufflenet_v1_g{g}_x{s}" for g in (1, 2, 3, 4, 8) for s in ("0_25", "0_5", "1_0", "1_5", "2_0")]
        + [f"parnet_{s}" for s in ("s", "m", "l", "xl")]
        + [f"asymmnet_{k}_x{m}" for k in ("large", "small") for m in ("0_35", "0_5", "0_75", "1_0")]
    )
    assert sorted(expected + [n + "_cifar" for n in expected]) == ALL_MODELS
    assert lightnets.list_models("parnet_*_cifar") == [f"parnet_{s}_cifar" for s in ("l", "m", "s", "xl")]


def test_unknown_name_lists_closest():
    with pytest.raises(ValueError, match=r"closest: .*spgnet_s2p6"):
        lightnets.create_model("spgnet_s2p66")
    with pytest.raises(ValueError, match="shufflenet_v1_g3_x1_0"):
        lightnets.create_model("shufflenet_v1_g3_x1")


@pytest.mark.parametrize("name", every_model(ALL_MODELS))
def test_forward_backward_and_api(name):
    model = lightnets.create_model(name, num_classes=7)
    size = BACKWARD_SIZE.get(name, model.default_input_size)
    assert model.default_input_size == (32 if name.endswith("_cifar") else 224)
    x = torch.randn(2, 3, size, size)
    features = model.forward_features(x)
    assert features.shape[:2] == (2, model.num_features)
    logits = model.forward_head(features)
    assert logits.shape == (2, 7)
    assert model.forward_head(features, pre_logits=True).shape[0] == 2
    logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)

    model.reset_classifier(3)
    assert model.eval()(x[:1]).shape == (1, 3)
    model.reset_classifier(0)
    assert model(x[:1]).shape == (1, model.head_hidden_size)


@pytest.mark.parametrize("name", [n for n in ALL_MODELS if n.endswith("_cifar")])
def test_cifar_forms_end_at_4x4(name):
    model = lightnets.create_model(name)
    assert model.num_classes == 10
    assert model.forward_features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)


@pytest.mark.parametrize("name", every_model(ALL_MODELS))
def test_deploy_form_equals_training_form(name):
    model = lightnets.create_model(name)
    randomize_batchnorm(model, seed=len(name))
    model.eval()
    size = model.default_input_size
    x = torch.randn(2, 3, size, size)
    deployed = lightnets.reparameterize_model(model)
    assert not deployed.training
    assert model.training is False and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    for module in deployed.modules():
        if isinstance(module, ConvBnAct):
            assert isinstance(module.bn, nn.Identity), f"{name}: a conv+BN pair was not fused"
    with torch.no_grad():
        reference, output = model(x), deployed(x)
    assert torch.isfinite(reference).all()
    assert (output - reference).abs().max().item() < 1e-4
    assert lightnets.count_params(deployed) <= lightnets.count_params(model)


def test_reparameterize_leaves_the_original_untouched():
    model = lightnets.create_model("parnet_s_cifar")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lightnets.reparameterize_model(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_spgnet_builds_all_three_group_conv_types():
    serial = lightnets.create_model("spgnet_s2p6_cifar", groups=1)  # serial group conv, P = 1
    parallel = lightnets.create_model("spgnet_s2p6_cifar", serial_depth=1)  # parallel group conv, S = 1
    deeper = lightnets.create_model("spgnet_s2p6_cifar", serial_depth=3)
    block = parallel.stages[0][0]
    assert len(block.chain) == 1 and block.chain[0].conv.groups == 6
    assert serial.stages[0][0].chain[1].conv.groups == 1
    assert deeper.stages[0][1].conv_out.conv.in_channels == 3 * 96 // 2
    x = torch.randn(2, 3, 32, 32)
    for model in (serial, parallel, deeper):
        assert model(x).shape == (2, 10)


@pytest.mark.parametrize("name", ["tv:mobilenet_v2", "tv:mobilenet_v3_large", "tv:shufflenet_v2_x1_0", "tv:resnet18"])
def test_torchvision_baselines_have_the_model_api(name):
    model = lightnets.create_model(name, num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    features = model.forward_features(x)
    assert features.shape[1] == model.num_features
    assert torch.allclose(model.forward_head(features), model(x), atol=1e-6)
    model.reset_classifier(2)
    assert model(x).shape == (1, 2)


def test_timm_baseline():
    model = lightnets.create_model("timm:ghostnet_100", num_classes=4).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4)
    with pytest.raises(ValueError, match="ghostnet_100"):
        lightnets.create_model("timm:ghostnet100")


@pytest.mark.parametrize("name", ["tv:resnet18", "tv:mobilenet_v2", "tv:shufflenet_v2_x1_0", "timm:ghostnet_100"])
def test_baseline_deploy_form_folds_every_batchnorm(name):
    # ResNet's stem and block BNs sit outside any Sequential, and timm's follow their conv through a
    # BatchNormAct2d; the traced fuser must reach all of them without changing the output.
    model = lightnets.create_model(name, num_classes=7).eval()
    randomize_batchnorm(model)
    deployed = lightnets.reparameterize_model(model)
    assert not any(isinstance(module, nn.BatchNorm2d) for module in deployed.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        assert torch.allclose(deployed(x), reference, atol=1e-4 * reference.abs().max().item())
        assert deployed.forward_features(x).shape[1] == deployed.num_features
    assert any(isinstance(module, nn.BatchNorm2d) for module in model.modules())  # the original is untouched


def test_shufflenet_unit_shuffles_as_megvii_after_the_depthwise_conv():
    from lightnets.models.shufflenet_v1 import ShuffleUnit

    unit = ShuffleUnit(64, 64, stride=1, groups=4).eval()  # bottleneck m = 16, g = 4
    randomize_batchnorm(unit)
    x = torch.randn(2, 64, 6, 6)
    with torch.no_grad():
        y = unit.conv_dw(unit.conv_reduce(x))
        # megvii's blocks.py: view the m channels as (m/g, g), swap the two axes, flatten.
        shuffled = y.reshape(2, 4, 4, 6, 6).permute(0, 2, 1, 3, 4).reshape(2, 16, 6, 6)
        expected = torch.relu(unit.conv_expand(shuffled) + x)
        assert torch.allclose(unit(x), expected, atol=1e-6)
        # The paper's order: shuffle right after the first 1x1 conv, channels viewed as (g, m/g).
        paper = ShuffleUnit(64, 64, stride=1, groups=4, shuffle_order="paper").eval()
        paper.load_state_dict(unit.state_dict())
        y = unit.conv_reduce(x).reshape(2, 4, 4, 6, 6).transpose(1, 2).reshape(2, 16, 6, 6)
        assert torch.allclose(paper(x), torch.relu(unit.conv_expand(unit.conv_dw(y)) + x), atol=1e-6)
        assert not torch.allclose(paper(x), unit(x), atol=1e-3)
    with pytest.raises(ValueError, match="shuffle_order must be one of"):
        ShuffleUnit(64, 64, stride=1, groups=4, shuffle_order="megvi")


def test_shufflenet_zero_init_last_zeros_the_expand_bn_of_residual_units_only():
    model = lightnets.create_model("shufflenet_v1_g8_x1_0")
    for stage in model.stages:
        for i, unit in enumerate(stage):
            weight = unit.conv_expand.bn.weight
            assert bool((weight == 0).all()) == (i > 0), f"unit {i}"  # unit 0 of a stage has stride 2


def test_parnet_act_layer():
    relu = lightnets.create_model("parnet_s_cifar", widths=(16, 32, 64, 128), act_layer="relu")
    silu = lightnets.create_model("parnet_s_cifar", widths=(16, 32, 64, 128))
    acts = {type(m) for m in relu.modules() if isinstance(m, (nn.ReLU, nn.SiLU))}
    assert acts == {nn.ReLU} and {type(m) for m in silu.modules() if isinstance(m, (nn.ReLU, nn.SiLU))} == {nn.SiLU}
    with pytest.raises(ValueError, match=r"act_layer must be one of \['relu', 'silu'\]"):
        lightnets.create_model("parnet_s_cifar", act_layer="swish")
