"""ONNX export of every registered model checked in onnxruntime; safetensors round trips are exact."""

import json

import pytest
import torch
from torch import nn

import lightnets
from lightnets.deploy import onnx as export
from lightnets.deploy.onnx import export_onnx
from lightnets.deploy.safetensors import export_safetensors, load_safetensors_model, load_weights_into, sidecar_path
from lightnets.models.checkpoint import CheckpointError
from lightnets.train.rundir import save_checkpoint

from .conftest import REPRESENTATIVES, every_model, randomize_batchnorm

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
safetensors = pytest.importorskip("safetensors")

# Small inputs keep the check fast: CIFAR forms at their own 32, ImageNet forms at 64 (ParNet's ImageNet
# forms need a multiple of 32). Export time, not input size, dominates: the whole sweep is about a minute.
SMALL_SIZE = {True: 32, False: 64}
# A narrow ParNet for the safetensors tests: the structure (and so the deploy folding) is ParNet-S's.
TINY_PARNET = {"widths": (16, 24, 32, 48), "num_classes": 5}


def build(name: str, deploy: bool, **kwargs) -> nn.Module:
    model = lightnets.create_model(name, **{"num_classes": 10, **kwargs})
    # Non-trivial BN statistics, so fused and unfused exports are checked on real numbers.
    randomize_batchnorm(model, seed=len(name))
    return lightnets.reparameterize_model(model) if deploy else model.eval()


def input_size(name: str) -> int:
    return SMALL_SIZE[name.endswith("_cifar")]


# A few seconds a model: the CIFAR form of each family in the default suite, every other model marked slow.
@pytest.mark.parametrize(
    "name", every_model(lightnets.list_models(), fast=tuple(n for n in REPRESENTATIVES if n.endswith("_cifar")))
)
def test_onnx_export_of_every_model_in_deploy_form(name, tmp_path):
    model = build(name, deploy=True)
    result = export_onnx(model, tmp_path / f"{name}.onnx", input_size(name))
    # Loud on purpose: a model falling back to dynamo costs ~10x the export time (or torch dropped TorchScript).
    assert result["exporter"] == "torchscript"
    assert set(result["max_rel_diff"]) == {1, 4}
    assert max(result["max_rel_diff"].values()) <= 1e-4
    # One self-contained file: no external-data sidecar and no temporary left behind.
    assert [p.name for p in tmp_path.iterdir()] == [f"{name}.onnx"]


@pytest.mark.parametrize("name", ["parnet_s_cifar", "spgnet_s2p6_cifar"])
def test_onnx_export_of_training_form(name, tmp_path):
    model = build(name, deploy=False).train()
    result = export_onnx(model, tmp_path / "m.onnx", 32)
    assert max(result["max_rel_diff"].values()) <= 1e-4
    assert model.training, "export_onnx must give the model back in the mode it came in"


def test_onnx_file_has_named_io_and_dynamic_batch(tmp_path):
    model = build("shufflenet_v1_g3_x0_5_cifar", deploy=True)
    path = tmp_path / "sub" / "model.onnx"
    result = export_onnx(model, path, 32, opset=17, check_batch_sizes=(3,))
    assert result["path"] == str(path) and result["opset"] == 17 and result["input_size"] == 32
    assert set(result["max_abs_diff"]) == {3}
    proto = onnx.load(str(path))
    dims = {
        value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in [*proto.graph.input, *proto.graph.output]
    }
    assert dims == {"images": ["batch", 3, 32, 32], "logits": ["batch", 10]}
    assert {op.domain: op.version for op in proto.opset_import}[""] == 17


def test_onnx_without_check_only_exports(tmp_path):
    result = export_onnx(build("asymmnet_small_x0_35_cifar", deploy=True), tmp_path / "m.onnx", 32, check=False)
    assert result["max_abs_diff"] == {} and (tmp_path / "m.onnx").is_file()


def test_onnx_refuses_an_input_size_the_model_cannot_run(tmp_path):
    with pytest.raises(
        ValueError, match=r"^'parnet_s_cifar' does not run on a \(2, 3, 30, 30\) input \(.*pick an input_size"
    ):
        export_onnx(build("parnet_s_cifar", deploy=False, **TINY_PARNET), tmp_path / "m.onnx", 30)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # the dynamo exporter takes ~10x TorchScript's time
def test_onnx_falls_back_to_dynamo_when_torchscript_fails(tmp_path, monkeypatch):
    def refuse(*args):
        raise RuntimeError("torchscript exporter unavailable")

    monkeypatch.setattr(export, "_EXPORTERS", (("torchscript", refuse), ("dynamo", export._export_dynamo)))
    result = export_onnx(build("shufflenet_v1_g3_x0_5_cifar", deploy=True), tmp_path / "m.onnx", 32)
    assert result["exporter"] == "dynamo"
    assert max(result["max_rel_diff"].values()) <= 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_onnx_export_failure_names_every_exporter(tmp_path, monkeypatch):
    def refuse(*args):
        raise RuntimeError("no luck\nsecond line")

    monkeypatch.setattr(export, "_EXPORTERS", (("torchscript", refuse), ("dynamo", refuse)))
    model = build("asymmnet_small_x0_35_cifar", deploy=True)
    with pytest.raises(
        ValueError, match=r"^ONNX export of 'asymmnet_small_x0_35_cifar' failed \(torchscript: no luck; "
    ):
        export_onnx(model, tmp_path / "m.onnx", 32)
    assert list(tmp_path.iterdir()) == []


def test_onnx_check_fails_on_a_corrupted_initializer_and_keeps_the_old_file(tmp_path, monkeypatch):
    numpy_helper = pytest.importorskip("onnx.numpy_helper")

    def export_then_corrupt(model, example, path, opset, outputs):
        export._export_torchscript(model, example, path, opset, outputs)
        proto = onnx.load(str(path))
        # Scale the classifier's weights: the graph stays valid but its outputs change.
        weight = next(t for t in proto.graph.initializer if list(t.dims)[:1] == [10] and len(t.dims) == 2)
        weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
        onnx.save(proto, str(path))

    monkeypatch.setattr(export, "_EXPORTERS", (("torchscript", export_then_corrupt),))
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous export")
    model = build("asymmnet_small_x0_35_cifar", deploy=True)
    pattern = (
        r"^ONNX check failed for .*m\.onnx at batch 1: max abs diff \S+, relative to max \|output\| \S+ is \S+ > rtol"
    )
    with pytest.raises(ValueError, match=pattern) as caught:
        export_onnx(model, path, 32)
    assert "\n" not in str(caught.value)
    assert path.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_onnx_check_fails_at_rtol_zero_when_outputs_differ(tmp_path, monkeypatch):
    class Session:
        def run(self, names, feeds):
            # Stands in for onnxruntime with an answer slightly off PyTorch's: rtol 0 must refuse it.
            images = torch.from_numpy(feeds["images"])
            return [(model(images) + 1e-3).detach().numpy()]

    model = build("asymmnet_small_x0_35_cifar", deploy=True)
    monkeypatch.setattr(export, "_onnx_session", lambda path: Session())
    with pytest.raises(ValueError, match=r"max abs diff 0\.001, .* > rtol 0; the file was not written$"):
        export_onnx(model, tmp_path / "m.onnx", 32, rtol=0.0)
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------------------------------------ safetensors


def assert_same_model(a: nn.Module, b: nn.Module, size: int) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert list(state_a) == list(state_b)
    for key in state_a:
        assert state_a[key].dtype == state_b[key].dtype, key
        assert torch.equal(state_a[key], state_b[key]), key
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(a.eval()(images), b.eval()(images))


def test_safetensors_round_trip_is_exact(tmp_path):
    model = build("parnet_s_cifar", deploy=False, **TINY_PARNET)
    path = tmp_path / "w.safetensors"
    kwargs = {"widths": (16, 24, 32, 48)}  # num_classes is filled in from the model
    returned = export_safetensors(
        model, path, model_name="parnet_s_cifar", model_kwargs=kwargs, classes=list("abcde"), extra={"input_size": 32}
    )
    assert returned == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.json", "w.safetensors"]
    sidecar = json.loads((tmp_path / "w.json").read_text())
    assert sidecar == {
        "format": "lightnets-safetensors",
        "model_name": "parnet_s_cifar",
        "model_kwargs": {"widths": [16, 24, 32, 48], "num_classes": 5},
        "classes": ["a", "b", "c", "d", "e"],
        "lightnets_version": lightnets.__version__,
        "input_size": 32,
    }
    with safetensors.safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["model_name"] == "parnet_s_cifar"

    loaded = load_safetensors_model(path)
    assert not loaded.training and loaded.classes == list("abcde") and loaded.model_name == "parnet_s_cifar"
    assert_same_model(model, loaded, 32)


def test_safetensors_round_trip_of_deploy_form(tmp_path):
    model = build("parnet_s_cifar", deploy=True, **TINY_PARNET)
    path = tmp_path / "deploy.safetensors"
    export_safetensors(model, path, model_name="parnet_s_cifar", model_kwargs=TINY_PARNET, extra={"deploy": True})
    sidecar = json.loads((tmp_path / "deploy.json").read_text())
    assert sidecar["deploy"] is True and sidecar["classes"] is None
    loaded = load_safetensors_model(path)
    assert not hasattr(loaded, "classes")
    assert_same_model(model, loaded, 32)

    # Into a fresh training-form model: it comes back folded, with the same weights.
    fresh = lightnets.create_model("parnet_s_cifar", **TINY_PARNET)
    assert_same_model(model, load_weights_into(fresh, path), 32)


def test_deploy_export_without_deploy_flag_says_so(tmp_path):
    model = build("parnet_s_cifar", deploy=True, **TINY_PARNET)
    path = tmp_path / "w.safetensors"
    export_safetensors(model, path, model_name="parnet_s_cifar", model_kwargs=TINY_PARNET)
    with pytest.raises(
        ValueError, match=r'do not fit model .* missing .*; if it was exported in deploy form.*"deploy": true'
    ):
        load_safetensors_model(path)


def test_safetensors_sidecar_missing_or_naming_another_model(tmp_path):
    model = build("asymmnet_small_x0_35_cifar", deploy=False)
    path = tmp_path / "w.safetensors"
    export_safetensors(model, path, model_name="asymmnet_small_x0_35_cifar", model_kwargs={"num_classes": 10})

    side = sidecar_path(path)
    sidecar = json.loads(side.read_text())
    side.write_text(json.dumps({**sidecar, "model_name": "spgnet_s2p6_cifar"}))
    with pytest.raises(
        ValueError,
        match=r"w\.safetensors: sidecar w\.json says model 'spgnet_s2p6_cifar' "
        r"but its metadata says 'asymmnet_small_x0_35_cifar'",
    ):
        load_safetensors_model(path)

    side.unlink()
    with pytest.raises(ValueError, match=r"w\.safetensors has no sidecar w\.json"):
        load_safetensors_model(path)


def test_load_weights_into_checks_the_model_name(tmp_path):
    model = build("asymmnet_small_x0_35_cifar", deploy=False)
    path = tmp_path / "w.safetensors"
    export_safetensors(model, path, model_name="asymmnet_small_x0_35_cifar", model_kwargs={}, classes=["x"] * 10)

    fresh = lightnets.create_model("asymmnet_small_x0_35_cifar", num_classes=10)
    assert load_weights_into(fresh, path) is fresh and fresh.classes == ["x"] * 10
    assert_same_model(model, fresh, 32)

    other = lightnets.create_model("asymmnet_small_x0_5_cifar", num_classes=10)
    with pytest.raises(
        ValueError,
        match=r"the model says model 'asymmnet_small_x0_5_cifar' but sidecar w\.json says 'asymmnet_small_x0_35_cifar'",
    ):
        load_weights_into(other, path)

    wrong_head = lightnets.create_model("asymmnet_small_x0_35_cifar", num_classes=100)
    with pytest.raises(ValueError, match=r"do not fit model 'asymmnet_small_x0_35_cifar': .* with other shapes"):
        load_weights_into(wrong_head, path)


def test_load_weights_into_from_a_checkpoint(tmp_path):
    model = build("shufflenet_v1_g3_x0_5_cifar", deploy=False)
    state = {
        "model_name": "shufflenet_v1_g3_x0_5_cifar",
        "model_kwargs": {"num_classes": 10},
        "classes": [str(i) for i in range(10)],
        "model": model.state_dict(),
    }
    save_checkpoint(state, tmp_path / "best.pt")
    fresh = lightnets.create_model("shufflenet_v1_g3_x0_5_cifar", num_classes=10)
    assert load_weights_into(fresh, tmp_path) is fresh  # a run directory finds its best.pt
    assert fresh.classes == state["classes"]
    assert_same_model(model, fresh, 32)

    other = lightnets.create_model("shufflenet_v1_g8_x0_5_cifar", num_classes=10)
    with pytest.raises(
        CheckpointError, match=r"best\.pt: the model says model 'shufflenet_v1_g8_x0_5_cifar' but the checkpoint"
    ):
        load_weights_into(other, tmp_path / "best.pt")
    unnamed = nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match=r"do not fit model Linear: 2 missing .* unexpected"):
        load_weights_into(unnamed, tmp_path / "best.pt")


def test_safetensors_handles_shared_tensors_and_checks_arguments(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(4, 4)
            self.decoder = nn.Linear(4, 4)
            self.decoder.weight = self.encoder.weight

    model = Tied()
    path = tmp_path / "tied.bin"
    export_safetensors(model, path, model_name="tied", model_kwargs={})
    assert sidecar_path(path).name == "tied.bin.json" and sidecar_path(path).is_file()
    fresh = Tied()
    load_weights_into(fresh, path)  # not named .safetensors: recognised by its header
    assert fresh.decoder.weight is fresh.encoder.weight
    assert torch.equal(fresh.encoder.weight, model.encoder.weight)
    assert torch.equal(fresh.decoder.bias, model.decoder.bias)

    with pytest.raises(ValueError, match=r"model_kwargs\['fn'\] is a function, which JSON cannot hold"):
        export_safetensors(model, tmp_path / "x.safetensors", model_name="tied", model_kwargs={"fn": lambda: None})
    with pytest.raises(ValueError, match=r"extra may not set model_name"):
        export_safetensors(
            model, tmp_path / "x.safetensors", model_name="tied", model_kwargs={}, extra={"model_name": "y"}
        )
    named = lightnets.create_model("asymmnet_small_x0_35_cifar")
    with pytest.raises(
        ValueError,
        match=r"model_name 'spgnet_s2p6' does not match the model, which was built as 'asymmnet_small_x0_35_cifar'",
    ):
        export_safetensors(named, tmp_path / "x.safetensors", model_name="spgnet_s2p6", model_kwargs={})


def test_cli_export_onnx_and_safetensors_round_trip(tmp_path, capsys):
    from lightnets.cli import main

    onnx_path = tmp_path / "m.onnx"
    assert (
        main(["export", "--model", "spgnet_s2p6_cifar", "--format", "onnx", "--deploy", "--out", str(onnx_path)]) == 0
    )
    assert onnx_path.is_file() and "onnxruntime check" in capsys.readouterr().out
    weights = tmp_path / "m.safetensors"
    assert (
        main(
            [
                "export",
                "--model",
                "asymmnet_small_x0_35_cifar",
                "--format",
                "safetensors",
                "--num-classes",
                "7",
                "--out",
                str(weights),
            ]
        )
        == 0
    )
    model = lightnets.create_model("asymmnet_small_x0_35_cifar", checkpoint=str(weights)).eval()
    assert model.num_classes == 7
    with pytest.raises(ValueError, match="asymmnet_small_x0_35_cifar"):
        lightnets.create_model("spgnet_s2p6_cifar", checkpoint=str(weights))
