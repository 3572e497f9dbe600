"""Backbone features (timm's features_only convention) of every family, both forms: shapes and strides against
feature_info, agreement with the full model, deploy form, ONNX with several outputs, state-dict keys, errors."""

import pytest
import torch

import lightnets
from lightnets.models.features import FeatureInfo, FeatureListNet, feature_take_indices

from .conftest import randomize_batchnorm

# One model per family and form (AsymmNet's two layouts differ in where they downsample first), plus extremes.
MODELS = [
    "spgnet_s2p6",
    "spgnet_s2p9_cifar",
    "shufflenet_v1_g3_x1_0",
    "shufflenet_v1_g8_x0_5_cifar",
    "shufflenet_v1_g1_x0_25",
    "parnet_s",
    "parnet_s_cifar",
    "asymmnet_large_x1_0",
    "asymmnet_large_x0_35_cifar",
    "asymmnet_small_x0_75",
    "asymmnet_small_x1_0_cifar",
]
ONE_PER_FAMILY = ["spgnet_s2p6_cifar", "shufflenet_v1_g3_x0_5", "parnet_s_cifar", "asymmnet_small_x0_35"]
OTHER_FORMS = ["spgnet_s2p6", "shufflenet_v1_g3_x0_5_cifar", "parnet_s_cifar", "asymmnet_large_x0_5"]
# What each family's feature_info lists (README "Backbone features").
MODULES = {
    "spgnet": ["stem.0", "stem.1", "stages.0", "stages.1", "stages.2"],
    "shufflenet": ["stem", "stem_pool", "stages.0", "stages.1", "stages.2"],
    "shufflenet_cifar": ["stem", "stages.0", "stages.1", "stages.2"],
    "parnet": ["stem.0", "stem.1", "stream1", "stream2", "fuse2", "stream3", "fuse3", "final_down"],
}


def size_of(name: str) -> int:
    # 64 keeps ImageNet forms fast and every map at least 2x2 at reduction 32.
    return 32 if name.endswith("_cifar") else 64


def family_modules(name: str) -> list[str] | None:
    family = name.split("_")[0]
    if family == "shufflenet" and name.endswith("_cifar"):
        family = "shufflenet_cifar"
    return MODULES.get(family)


@pytest.mark.parametrize("name", MODELS)
def test_feature_maps_match_feature_info(name):
    features = lightnets.create_model(name, features_only=True).eval()
    info = features.feature_info
    size = size_of(name)
    with torch.no_grad():
        maps = features(torch.randn(2, 3, size, size))
    assert len(maps) == len(info.channels()) == len(info.reductions()) == len(info)
    for tensor, channels, reduction in zip(maps, info.channels(), info.reductions()):
        assert tensor.shape == (2, channels, size // reduction, size // reduction)
    # Reductions never decrease, and the last map is the network's coarsest: 32 for ImageNet, 8 for CIFAR.
    assert info.reductions() == sorted(info.reductions())
    assert info.reductions()[-1] == (8 if name.endswith("_cifar") else 32)
    if family_modules(name) is not None:
        assert info.module_name() == family_modules(name)
    if name.startswith("asymmnet"):  # the last block at each resolution: one map per reduction
        assert len(set(info.reductions())) == len(info)


@pytest.mark.parametrize("name", MODELS)
def test_features_equal_the_full_models_maps(name):
    model = lightnets.create_model(name)
    randomize_batchnorm(model, seed=len(name))
    model.eval()
    x = torch.randn(2, 3, size_of(name), size_of(name))
    modules = [entry["module"] for entry in model.feature_info]
    seen = {}
    hooks = [
        model.get_submodule(m).register_forward_hook(lambda mod, args, out, m=m: seen.setdefault(m, out))
        for m in modules
    ]
    with torch.no_grad():
        final = model.forward_features(x)
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        extractor = FeatureListNet(model)
        for got, module in zip(extractor(x), modules):
            assert torch.equal(got, seen[module]), module
        again, intermediates = model.forward_intermediates(x)
        assert torch.equal(again, final)
        assert all(torch.equal(a, seen[m]) for a, m in zip(intermediates, modules))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [t.shape for t in last_two] == [seen[m].shape for m in modules[-2:]]


@pytest.mark.parametrize(
    "name", ["spgnet_s2p6_cifar", "shufflenet_v1_g3_x0_5", "parnet_s_cifar", "asymmnet_small_x0_35"]
)
def test_out_indices_prune_the_backbone_and_keep_the_models_keys(name):
    model = lightnets.create_model(name)
    count = len(model.feature_info)
    features = lightnets.create_model(name, features_only=True, out_indices=(1, -2))
    assert features.feature_info.out_indices == (1, count - 2)
    assert features.feature_info.channels() == [model.feature_info[i]["num_chs"] for i in (1, count - 2)]
    assert len(features(torch.randn(1, 3, size_of(name), size_of(name)))) == 2
    keys, full_keys = set(features.state_dict()), set(model.state_dict())
    # Same names as the classifier's, so its weights load; no head, and nothing after the last chosen map.
    assert keys < full_keys and not any(k.startswith("classifier.") for k in keys)
    last = model.feature_info[-1]["module"]
    assert not any(k.startswith(last + ".") for k in keys)
    features.load_state_dict({k: v for k, v in model.state_dict().items() if k in keys})


def test_parnet_early_maps_hold_neither_stream_3_nor_the_fusions():
    features = lightnets.create_model("parnet_s_cifar", features_only=True, out_indices=(0, 1, 2, 3))
    assert sorted(name for name, _ in features.named_children()) == ["down_to_stream2", "stem", "stream1", "stream2"]
    assert features.feature_info.module_name() == ["stem.0", "stem.1", "stream1", "stream2"]


@pytest.mark.parametrize(
    "name", ["spgnet_s2p6", "shufflenet_v1_g3_x0_5_cifar", "parnet_s_cifar", "asymmnet_large_x0_5"]
)
def test_deploy_form_of_the_features_equals_the_training_form(name):
    features = lightnets.create_model(name, features_only=True)
    randomize_batchnorm(features, seed=3)
    features.eval()
    deploy = lightnets.reparameterize_model(features)
    assert deploy.feature_info.channels() == features.feature_info.channels()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deploy.modules()) or name.startswith("parnet")
    x = torch.randn(2, 3, size_of(name), size_of(name))
    with torch.no_grad():
        for a, b in zip(deploy(x), features(x)):
            assert (a - b).abs().max() <= 1e-4 * b.abs().max()


@pytest.mark.parametrize(
    "name", ["spgnet_s2p6_cifar", "shufflenet_v1_g3_x0_5", "parnet_s_cifar", "asymmnet_small_x0_35"]
)
def test_onnx_export_of_the_deploy_features_has_one_output_per_map(name, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from lightnets.deploy.onnx import export_onnx

    features = lightnets.create_model(name, features_only=True, out_indices=(1, 2, -1))
    randomize_batchnorm(features, seed=5)
    deploy = lightnets.reparameterize_model(features)
    result = export_onnx(deploy, tmp_path / "f.onnx", size_of(name))
    names = ["features.0", "features.1", "features.2"]
    assert result["outputs"] == names and set(result["max_rel_diff"]) == {1, 4}
    assert max(result["max_rel_diff"].values()) <= 1e-4
    proto = onnx.load(str(tmp_path / "f.onnx"))
    shapes = {
        out.name: [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] for out in proto.graph.output
    }
    size = size_of(name)
    info = features.feature_info
    expected = {n: ["batch", c, size // r, size // r] for n, c, r in zip(names, info.channels(), info.reductions())}
    assert shapes == expected


def test_onnx_check_compares_every_output(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from lightnets.deploy import onnx as onnx_export

    features = lightnets.create_model("shufflenet_v1_g3_x0_5_cifar", features_only=True, out_indices=(0, 1)).eval()

    class Session:  # onnxruntime with the second map slightly off: the check must name it
        def run(self, names, feeds):
            maps = features(torch.from_numpy(feeds["images"]))
            return [maps[0].detach().numpy(), (maps[1] + 1e-2).detach().numpy()]

    monkeypatch.setattr(onnx_export, "_onnx_session", lambda path: Session())
    with pytest.raises(ValueError, match=r"at batch 1, output features\.1: max abs diff 0\.01"):
        onnx_export.export_onnx(features, tmp_path / "f.onnx", 32)
    assert not (tmp_path / "f.onnx").exists()


def test_features_from_a_checkpoint_carry_its_weights(tmp_path):
    from lightnets.deploy.safetensors import export_safetensors

    pytest.importorskip("safetensors")
    model = lightnets.create_model("asymmnet_small_x0_35_cifar", num_classes=4)
    randomize_batchnorm(model, seed=1)
    kwargs = {"num_classes": 4}
    path = export_safetensors(model, tmp_path / "m.safetensors", model_name=model.model_name, model_kwargs=kwargs)
    features = lightnets.create_model("asymmnet_small_x0_35_cifar", features_only=True, checkpoint=path)
    for key, value in features.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_feature_info_api_and_index_errors():
    info = FeatureInfo([{"num_chs": c, "reduction": 2**i, "module": f"m{i}"} for i, c in enumerate((8, 16, 32))], 2)
    assert info.out_indices == (1, 2) and info.channels() == [16, 32] and info.reduction() == info.reductions()
    assert info.channels(0) == 8 and info.module_name() == ["m1", "m2"] and len(info) == 3
    assert info.from_other((-1,)).channels() == [32]
    assert info.get_dicts(keys=["num_chs"]) == [{"num_chs": 16}, {"num_chs": 32}]
    assert feature_take_indices(4, None) == [0, 1, 2, 3] and feature_take_indices(4, (3, -4, 3)) == [0, 3]
    with pytest.raises(ValueError, match=r"out_indices \(5,\) of spgnet_s2p6: feature index 5 is out of range"):
        lightnets.create_model("spgnet_s2p6", features_only=True, out_indices=(5,))
    with pytest.raises(ValueError, match="pass that too"):
        lightnets.create_model("spgnet_s2p6", out_indices=(1,))
    with pytest.raises(ValueError, match="tv:resnet18 has no feature_info"):
        lightnets.create_model("tv:resnet18", features_only=True)
    with pytest.raises(ValueError, match="last n features with n from 1 to 5"):
        lightnets.create_model("spgnet_s2p6_cifar").forward_intermediates(torch.zeros(1, 3, 32, 32), indices=6)


def test_timm_names_pass_features_only_to_timm():
    features = lightnets.create_model("timm:resnet18", features_only=True, out_indices=(2, 3))
    maps = features(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == features.feature_info.channels() == [128, 256]
