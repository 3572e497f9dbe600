"""timm's model tests (``tests/test_models.py`` of timm 1.0.31), written here for lightnets' models.

Each check below is one of timm's, run over one variant per family in both forms (ImageNet and ``_cifar``) at the
input sizes timm's tests use (the model's own size, capped at timm's targets). timm checks every model it has; a
model library that follows timm's API is expected to pass them. Where lightnets deliberately differs, the test says
why in one line and asserts the documented behaviour instead:

- ``forward_intermediates(norm=True)`` changes nothing: lightnets models have no final norm layer.
- ``output_fmt`` other than NCHW is refused: every lightnets feature map is NCHW.
- ``features_only=True`` builds lightnets' FX-pruned ``FeatureListNet`` (timm's ``feature_cls='fx'`` idea), not
  timm's hook or getter classes, so ``feature_cls`` is not taken and the extractor has no grad checkpointing.
- ``global_pool='catavgmax'`` is refused: it doubles the head's width, which no lightnets head is built for.

Then what timm's tooling does with a model: ``timm.create_model`` by lightnets name, ``resolve_data_config`` and
``create_transform`` training one on a class folder, and TorchScript, FX-then-TorchScript and ``torch.export``
giving eager's outputs.
"""

from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch
from torch import nn

import lightnets
from lightnets.models.layers import ClassifierModel

from .conftest import REPRESENTATIVES, shared_file

# timm's test sizes (tests/test_models.py)
TARGET_FWD_SIZE = 384
TARGET_BWD_SIZE = 128
MAX_FWD_OUT_SIZE = 448
TARGET_JIT_SIZE = 128
TARGET_FFEAT_SIZE = 96
TARGET_FWD_FX_SIZE = 128

# The ImageNet forms take seconds per check at 224: the slow suite runs them, the default suite the CIFAR forms.
CIFAR_FORMS = [name for name in REPRESENTATIVES if name.endswith("_cifar")]
BOTH_FORMS = [pytest.param(name, marks=() if name in CIFAR_FORMS else pytest.mark.slow) for name in REPRESENTATIVES]
# The heaviest checks (every prune index; scripting, tracing and exporting) keep one CIFAR form in the default suite.
ONE_FAST = [
    pytest.param(name, marks=() if name == "asymmnet_small_x0_35_cifar" else pytest.mark.slow)
    for name in REPRESENTATIVES
]


def input_size(model: nn.Module, target: int | None = None) -> tuple[int, ...]:
    """timm's ``_get_input_size``: the cfg's ``input_size``, each side capped at ``target``."""
    size = model.default_cfg["input_size"]
    return tuple(min(x, target) for x in size) if target and max(size) > target else tuple(size)


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("name", BOTH_FORMS)
def test_model_forward(name: str) -> None:
    model = lightnets.create_model(name).eval()
    inputs = torch.randn(1, *input_size(model, TARGET_FWD_SIZE))
    with torch.no_grad():
        outputs = model(inputs)
        assert outputs.shape[0] == 1 and not torch.isnan(outputs).any()
        model.set_grad_checkpointing()  # supported: the output must not change
        torch.testing.assert_close(model(inputs), outputs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", BOTH_FORMS)
def test_model_backward(name: str) -> None:
    model = lightnets.create_model(name, num_classes=42).train()
    outputs = model(torch.randn(2, *input_size(model, TARGET_BWD_SIZE)))
    outputs.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert outputs.shape[-1] == 42 and not torch.isnan(outputs).any()


@pytest.mark.parametrize("name", BOTH_FORMS)
def test_model_default_cfgs(name: str) -> None:
    model = lightnets.create_model(name).eval()
    cfg = model.default_cfg
    assert cfg is model.pretrained_cfg
    # The API contract timm's factory and optimizer code rely on.
    with pytest.raises(TypeError):
        lightnets.create_model(name, not_a_model_arg=1)
    assert inspect.signature(model.reset_classifier).parameters["global_pool"].default is None
    assert model.num_classes > 0 and model.num_features > 0 and model.head_hidden_size > 0
    assert model.in_chans == cfg["input_size"][0] == 3
    assert cfg["num_classes"] == model.num_classes

    pool_size = cfg["pool_size"]
    size = tuple(min(x, MAX_FWD_OUT_SIZE) for x in cfg["input_size"])
    inputs = torch.randn(1, *size)
    with torch.no_grad():
        features = model.forward_features(inputs)  # always unpooled
        pre_logits = model.forward_head(features, pre_logits=True)
        assert tuple(features.shape[-2:]) == tuple(pool_size), f"unpooled features {features.shape} != cfg"
        assert features.shape[1] == model.num_features
        assert pre_logits.shape[1] == model.head_hidden_size

        model.to(torch.bfloat16)  # a dtype change after a forward leaves no stale state (small: bf16 is slow on AVX2)
        assert model(inputs[..., :32, :32].to(torch.bfloat16)).dtype == torch.bfloat16
        model.to(torch.float32)

        model.reset_classifier(0)
        assert model.num_classes == 0
        assert model(inputs).shape == pre_logits.shape
        model.reset_classifier(0, "")  # no classifier, no pooling: the maps themselves
        unpooled = model(inputs)
        assert unpooled.dim() == 4 and tuple(unpooled.shape[-2:]) == tuple(pool_size)

        headless = lightnets.create_model(name, num_classes=0).eval()
        assert headless(inputs).shape == pre_logits.shape
        mapped = lightnets.create_model(name, num_classes=0, global_pool="").eval()(inputs)
        assert mapped.dim() == 4 and tuple(mapped.shape[-2:]) == tuple(pool_size)

    state_dict = lightnets.create_model(name).state_dict()
    assert cfg["classifier"] + ".weight" in state_dict
    first_convs = (cfg["first_conv"],) if isinstance(cfg["first_conv"], str) else cfg["first_conv"]
    assert all(conv + ".weight" in state_dict for conv in first_convs)
    assert cfg["crop_pct"] == (1.0 if name.endswith("_cifar") else 0.875)
    assert len(cfg["mean"]) == len(cfg["std"]) == 3 and cfg["interpolation"] == "bilinear"


@pytest.mark.parametrize("name", CIFAR_FORMS)
def test_reset_classifier_keeps_device_dtype_mode_and_freezing(name: str) -> None:
    with torch.device("meta"):
        model = lightnets.create_model(name)
    assert all(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()])  # create on the device
    model.to(dtype=torch.float64).eval()
    model.reset_classifier(0)
    model.reset_classifier(2)
    head = list(model.get_classifier().parameters())
    assert head and all(p.device.type == "meta" and p.dtype == torch.float64 for p in head)
    assert not any(module.training for module in model.modules())
    model = lightnets.create_model(name).requires_grad_(False)
    model.reset_classifier(0)
    model.reset_classifier(0, "")
    assert not [n for n, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("name", ["shufflenet_v1_g3_x0_5_cifar", "spgnet_s2p6_cifar"])
def test_reset_classifier_keeps_pool(name: str) -> None:
    model = lightnets.create_model(name, global_pool="max").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(5)
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), expected)
        assert model(x).shape == (2, 5)
        model.reset_classifier(5, "avg")
        assert not torch.equal(model.forward_head(model.forward_features(x), pre_logits=True), expected)


def test_catavgmax_and_unpooled_classifier_are_refused_clearly() -> None:
    # Deliberate difference: catavgmax would double the head's width.
    with pytest.raises(ValueError, match="catavgmax"):
        lightnets.create_model("parnet_s_cifar", global_pool="catavgmax")
    with pytest.raises(ValueError, match="num_classes=0"):
        lightnets.create_model("parnet_s_cifar", global_pool="")


@pytest.mark.parametrize("name", BOTH_FORMS)
def test_model_load_pretrained_with_other_in_chans_and_classes(name: str, tmp_path) -> None:
    # timm's test_model_load_pretrained and test_model_features_pretrained, from a weights file (a bare state dict
    # in lightnets' names) since only two names ship weights; those are tested in test_pretrained.py.
    source = lightnets.create_model(name).eval()
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    first = source.default_cfg["first_conv"]
    first = (first if isinstance(first, str) else first[0]) + ".weight"
    gray = lightnets.create_model(name, checkpoint=str(path), in_chans=1, num_classes=5)
    assert gray.num_classes == 5 and gray.in_chans == 1 and gray.default_cfg["input_size"][0] == 1
    torch.testing.assert_close(gray.state_dict()[first], source.state_dict()[first].sum(1, keepdim=True))
    assert lightnets.create_model(name, checkpoint=str(path), in_chans=1, num_classes=0).num_classes == 0
    five = lightnets.create_model(name, checkpoint=str(path), in_chans=5).state_dict()[first]
    torch.testing.assert_close(five[:, :3], source.state_dict()[first] * 3 / 5)
    extractor = lightnets.create_model(name, checkpoint=str(path), features_only=True)
    assert all(torch.equal(t, source.state_dict()[k]) for k, t in extractor.state_dict().items())


@pytest.mark.parametrize("name", BOTH_FORMS)
def test_model_forward_features(name: str) -> None:
    model = lightnets.create_model(name, features_only=True).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3
    size = input_size(model, TARGET_FFEAT_SIZE)
    with torch.no_grad():
        outputs = model(torch.randn(1, *size))
    assert len(outputs) == len(channels)
    for c, r, o in zip(channels, reductions, outputs):
        assert o.shape[1] == c and not torch.isnan(o).any()
        for side in (2, 3):
            assert size[side - 1] / (2 * r) < o.shape[side] <= math.ceil(size[side - 1] / r) + 1


@pytest.mark.parametrize("name", BOTH_FORMS)
def test_model_forward_intermediates(name: str) -> None:
    model = lightnets.create_model(name).eval()
    size = input_size(model, TARGET_FFEAT_SIZE)
    x = torch.randn(1, *size)
    info = model.feature_info
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x, output_fmt="NCHW")
        assert len(intermediates) == len(info) >= 3
        for entry, o in zip(info, intermediates):
            assert o.shape[1] == entry["num_chs"]
            assert o.shape[-1] <= math.ceil(size[-1] / entry["reduction"]) + 1
        torch.testing.assert_close(final, model.forward_features(x), rtol=1e-5, atol=1e-8)
        # Deliberate difference: no final norm, so norm=True is the same pass.
        torch.testing.assert_close(model.forward_intermediates(x, norm=True)[0], final)
        model.set_grad_checkpointing()
        torch.testing.assert_close(model.forward_intermediates(x)[0], final, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="NCHW"):  # deliberate difference: NCHW only
        model.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("name", ONE_FAST)
def test_prune_intermediate_layers_contract(name: str) -> None:
    model = lightnets.create_model(name).eval()
    x = torch.randn(2, *input_size(model, TARGET_FFEAT_SIZE))
    last = len(model.feature_info) - 1
    with torch.no_grad():
        expected = model(x)
        taps = model.forward_intermediates(x, intermediates_only=True)
        kept = copy.deepcopy(model)
        kept.prune_intermediate_layers([last], prune_head=False)
        torch.testing.assert_close(kept(x), expected, msg="prune_head=False at the last index changed the output")
    for i in range(last + 1):
        with torch.no_grad():
            early = model.forward_intermediates(x, indices=[i], stop_early=True, intermediates_only=True)
            torch.testing.assert_close(early[0], taps[i], msg=f"stop_early tap {i}")
            pruned = copy.deepcopy(model)
            take = pruned.prune_intermediate_layers([i], prune_norm=True)
            selected = pruned.forward_intermediates(x, indices=take, intermediates_only=True)
            torch.testing.assert_close(selected[0], taps[i], msg=f"pruned tap {i}")
            torch.testing.assert_close(pruned.forward_features(x), taps[i], msg=f"pruned features {i}")
        pruned.train()
        selected = pruned.forward_intermediates(x, indices=take, intermediates_only=True)
        sum(f.sum() for f in [*selected, pruned.forward_features(x)]).backward()
        unused = [n for n, p in pruned.named_parameters() if p.requires_grad and p.grad is None]
        assert not unused, f"pruned to {i}, unused params: {unused[:5]}"
        pruned.eval()
        copied = copy.deepcopy(pruned)  # a copy runs its own layers, not the original's
        with torch.no_grad():
            expected = pruned.forward_features(x)
            torch.testing.assert_close(copied.forward_features(x), expected)
            for parameter in copied.parameters():
                parameter.zero_()
            torch.testing.assert_close(pruned.forward_features(x), expected)


@pytest.mark.parametrize("name", CIFAR_FORMS)
def test_grad_checkpointing_gives_the_same_gradients(name: str) -> None:
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = lightnets.create_model(name).eval()  # eval: BN uses running statistics, so both passes agree
        model.set_grad_checkpointing(checkpointing)
        model(x).pow(2).mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain)


@pytest.mark.parametrize("name", CIFAR_FORMS)
def test_grad_checkpointing_keeps_fewer_activations_for_backward(name: str) -> None:
    # The memory it saves, counted without timing: the bytes autograd keeps for the backward pass during forward.
    x = torch.randn(4, 3, 32, 32)
    kept = {}
    for checkpointing in (False, True):
        model = lightnets.create_model(name).train()
        model.set_grad_checkpointing(checkpointing)
        total = 0

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = model(x).sum()
        kept[checkpointing] = total
        loss.backward()
    assert kept[True] < 0.6 * kept[False], kept
    print(f"{name}: {kept[False] / 2**20:.1f} MiB kept for backward, {kept[True] / 2**20:.1f} MiB with checkpointing")


def _fx_model(model: nn.Module) -> nn.Module:
    """timm's ``_create_fx_model``: torchvision's feature extractor returning the model's output node."""
    from timm.models._features_fx import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    tracer_kwargs = {"leaf_modules": get_notrace_modules(), "autowrap_functions": get_notrace_functions()}
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(
        model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs
    )


@pytest.mark.parametrize("name", BOTH_FORMS)
def test_model_forward_and_backward_fx(name: str) -> None:
    model = lightnets.create_model(name).eval()
    inputs = torch.randn(1, *input_size(model, TARGET_FWD_FX_SIZE))
    with torch.inference_mode():
        outputs = model(inputs)
        fx_outputs = torch.cat(tuple(_fx_model(model)(inputs).values()))
    torch.testing.assert_close(fx_outputs, outputs, rtol=1e-4, atol=1e-5)

    model = lightnets.create_model(name, num_classes=42).train()
    traced = _fx_model(model)
    out = torch.cat(tuple(traced(torch.randn(2, *input_size(model, TARGET_FWD_FX_SIZE))).values()))
    out.mean().backward()
    assert out.shape[-1] == 42
    assert not [n for n, p in traced.named_parameters() if p.grad is None]


@pytest.mark.parametrize("name", ONE_FAST)
def test_torchscript_fx_torchscript_and_export_equal_eager(name: str) -> None:
    model = lightnets.create_model(name).eval()
    inputs = torch.randn(1, *input_size(model, TARGET_JIT_SIZE))
    with torch.no_grad():
        expected = model(inputs)
        torch.testing.assert_close(torch.jit.script(model)(inputs), expected, rtol=1e-4, atol=1e-5)
        scripted_fx = torch.jit.script(_fx_model(model))
        torch.testing.assert_close(torch.cat(tuple(scripted_fx(inputs).values())), expected, rtol=1e-4, atol=1e-5)
    exported = torch.export.export(model, (inputs,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(inputs), expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------- through timm


@pytest.fixture(scope="module")
def timm_registry():
    import timm

    lightnets.register_with_timm()
    return timm


def test_timm_builds_lists_and_configures_lightnets_models(timm_registry) -> None:
    timm = timm_registry
    assert set(timm.list_models("shufflenet_v1_g3*")) == set(lightnets.list_models("shufflenet_v1_g3*"))
    assert set(lightnets.list_models()) <= set(timm.list_models())
    assert lightnets.register_with_timm() == []  # a second call changes nothing
    model = timm.create_model("spgnet_s2p6")
    assert isinstance(model, ClassifierModel) and model.model_name == "spgnet_s2p6"
    assert timm.data.resolve_data_config(model=model)["input_size"] == (3, 224, 224)
    cifar = timm.create_model("asymmnet_small_x0_35_cifar", num_classes=3, drop_rate=0.0)
    config = timm.data.resolve_data_config(model=cifar)
    assert config["input_size"] == (3, 32, 32) and config["crop_pct"] == 1.0
    assert config["mean"] == pytest.approx((0.4914, 0.4822, 0.4465))
    assert timm.models.get_pretrained_cfg_value("parnet_s_cifar", "input_size") == (3, 32, 32)
    with torch.device("meta"):
        assert next(timm.create_model("parnet_s_cifar", device="meta").parameters()).device.type == "meta"


def test_timm_does_not_shadow_its_own_names(timm_registry, monkeypatch) -> None:
    from timm.models import _registry

    import lightnets.models.timm_bridge as bridge

    # Unregister one lightnets name and give timm a model of that name; the next call must leave it alone.
    name = "parnet_s_cifar"
    theirs = _registry._model_entrypoints[name]
    monkeypatch.setitem(_registry._model_entrypoints, name, lambda **kwargs: "timm's own")
    bridge.register_with_timm()
    assert _registry._model_entrypoints[name]() == "timm's own"
    monkeypatch.setitem(_registry._model_entrypoints, name, theirs)


def test_bgr_weights_are_served_to_timm_as_rgb(timm_registry, tmp_path) -> None:
    from lightnets.models.shufflenet_v1 import authors_key_map

    name = "shufflenet_v1_g3_x0_5"
    source = lightnets.create_model(name).eval()
    path = tmp_path / "megvii.pth.tar"  # megvii's layout: {'state_dict': ...} under their key names
    names = authors_key_map(source)
    torch.save({"state_dict": {f"module.{names[k]}": v for k, v in source.state_dict().items()}}, path)
    ours = lightnets.create_model(name, checkpoint=str(path)).eval()
    assert ours.pretrained_cfg["channel_order"] == "BGR"
    theirs = timm_registry.create_model(name, checkpoint=str(path)).eval()
    assert theirs.pretrained_cfg["channel_order"] == "RGB"
    config = timm_registry.data.resolve_data_config(model=theirs)
    assert config["std"] == pytest.approx((1 / 255,) * 3) and config["mean"] == (0.0, 0.0, 0.0)
    rgb = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        torch.testing.assert_close(theirs(rgb), ours(rgb.flip(1)), rtol=1e-5, atol=1e-5)


def test_a_timm_style_loop_trains_a_lightnets_model_on_a_class_folder(timm_registry) -> None:
    from timm.optim import create_optimizer_v2
    from torchvision.datasets import ImageFolder

    timm = timm_registry
    root = shared_file("hymenoptera")
    model = timm.create_model("shufflenet_v1_g3_x0_5_cifar", num_classes=2)
    config = timm.data.resolve_data_config(model=model)
    assert config["input_size"] == (3, 32, 32)  # the _cifar form's own size, from its cfg
    train = ImageFolder(root / "train", transform=timm.data.create_transform(**config, is_training=True))
    val = ImageFolder(root / "val", transform=timm.data.create_transform(**config))
    train_loader = torch.utils.data.DataLoader(train, batch_size=16, shuffle=True, num_workers=0)
    optimizer = create_optimizer_v2(model, opt="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    before = copy.deepcopy(model.state_dict())
    for step, (images, targets) in enumerate(train_loader):
        assert images.shape[1:] == (3, 32, 32)
        loss = loss_fn(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
        if step == 4:
            break
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    images, targets = next(iter(torch.utils.data.DataLoader(val, batch_size=32)))
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == targets).float().mean().item()
    assert 0.0 <= accuracy <= 1.0 and images.shape[1:] == (3, 32, 32)
