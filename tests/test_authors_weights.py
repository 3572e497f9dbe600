"""The authors' checkpoint files load through create_model, without the authors' code.

``tests/manifests/<family>.json`` holds the key names and shapes of the authors' state dicts, recorded from their
code by ``benchmarks/authors_equivalence.py --write-manifests`` (which also shows that the loaded models give the
authors' outputs). Here the converters are tested against tensors built from those manifests, and every container
format the authors' training code writes is written and loaded.
"""

import argparse
import importlib
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import lightnets
from lightnets.cli import main
from lightnets.models.errors import CheckpointError
from lightnets.train.loop import Preprocess

from .conftest import every_model, randomize_batchnorm, shared_file

MANIFESTS = Path(__file__).resolve().parent / "manifests"
FAMILIES = ("shufflenet_v1", "spgnet", "parnet", "asymmnet")
# Their released ParNet code runs ReLU blocks (parnet.py's docstring).
BUILD_KWARGS = {"parnet": {"act_layer": "relu"}}


def manifest(family: str) -> dict:
    return json.loads((MANIFESTS / f"{family}.json").read_text())


def manifest_models() -> list[tuple[str, str]]:
    return [(family, name) for family in FAMILIES for name in manifest(family)["models"]]


def authors_state_dict(family: str, name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the authors' key names and shapes for ``name``."""
    data = manifest(family)
    entry = data["models"][name]
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in zip(data["layouts"][entry["layout"]], entry["shapes"]):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(int(torch.randint(1, 10**6, (), generator=generator)))
        else:
            state[key] = torch.randn(shape, generator=generator)
    return state


def family_module(family: str):
    return importlib.import_module(f"lightnets.models.{family}")


def as_authors(model: nn.Module, family: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """``model``'s weights under the authors' key names: what their code would save for the same network."""
    key_map = family_module(family).authors_key_map(model)
    return {prefix + key_map[key]: value.clone() for key, value in model.state_dict().items()}


def randomized(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial BN statistics, so that no loaded BN could pass for a fresh one (the convs are random already)."""
    randomize_batchnorm(model, seed)
    return model


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------------------- converters


def test_manifests_cover_what_the_authors_code_builds():
    models = {family: sorted(manifest(family)["models"]) for family in FAMILIES}
    assert models["shufflenet_v1"] == sorted(
        f"shufflenet_v1_g{g}_x{s}" for g in (3, 8) for s in ("0_5", "1_0", "1_5", "2_0")
    )
    assert models["spgnet"] == [f"spgnet_s2p{p}" for p in (6, 7, 8, 9)]
    assert models["parnet"] == sorted(f"parnet_{s}" for s in ("s", "m", "l", "xl"))
    assert len(models["asymmnet"]) == 8


@pytest.mark.parametrize(("family", "name"), every_model(manifest_models()))
def test_converter_uses_every_key_once_and_round_trips(family, name):
    theirs = authors_state_dict(family, name)
    model = lightnets.create_model(name, **BUILD_KWARGS.get(family, {}))
    module = family_module(family)
    key_map = module.authors_key_map(model)
    # Every key of the model has one of theirs, and every one of theirs is used exactly once.
    assert sorted(key_map.values()) == sorted(theirs)
    converted = module.checkpoint_filter_fn(theirs, model)
    own = model.state_dict()
    assert list(converted) == list(own)
    assert all(converted[k].shape == own[k].shape for k in own)
    assert all(converted[k] is theirs[key_map[k]] for k in own)  # renamed, never copied or altered
    model.load_state_dict(converted, strict=True)
    # And back: the loaded model, saved under their names, is the state dict we started from.
    back = as_authors(model, family)
    assert back.keys() == theirs.keys() and all(torch.equal(back[k], theirs[k]) for k in theirs)
    # lightnets' own keys pass through unchanged.
    assert module.checkpoint_filter_fn(own, model) is own


def test_a_file_of_another_variant_names_the_first_mismatching_key(tmp_path):
    path = tmp_path / "g8.pth.tar"
    torch.save({"state_dict": authors_state_dict("shufflenet_v1", "shufflenet_v1_g8_x1_0")}, path)
    with pytest.raises(CheckpointError) as caught:
        lightnets.create_model("shufflenet_v1_g3_x1_0", checkpoint=str(path))
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert "first mismatch features.0.branch_main_1.0.weight (as stages.0.0.conv_reduce.conv.weight)" in message
    assert "file (96, 24, 1, 1) vs model (60, 24, 1, 1)" in message

    theirs = authors_state_dict("asymmnet", "asymmnet_small_x1_0")
    theirs["extra.weight"] = torch.zeros(3)
    torch.save(theirs, path)
    with pytest.raises(CheckpointError, match=r"1 of the file's keys have no place in the model, first extra\.weight"):
        lightnets.create_model("asymmnet_small_x1_0", checkpoint=str(path))
    other_family = tmp_path / "spgnet.pth"
    torch.save({"state_dict": authors_state_dict("spgnet", "spgnet_s2p6")}, other_family)
    with pytest.raises(CheckpointError, match=r"none of its \d+ keys is the model's or its authors' \(its first is "):
        lightnets.create_model("asymmnet_small_x1_0", checkpoint=str(other_family))
    del theirs["extra.weight"], theirs["output.bias"]
    torch.save(theirs, path)
    with pytest.raises(CheckpointError, match=r"the file has no output\.bias for classifier\.bias \(1000,\)"):
        lightnets.create_model("asymmnet_small_x1_0", checkpoint=str(path))


def test_spgnet_converter_refuses_a_block_the_authors_never_built(tmp_path):
    model = lightnets.create_model("spgnet_s2p6_cifar", serial_depth=3)
    path = tmp_path / "spg.pth"
    torch.save({"state_dict": {"first_conv.0.conv.weight": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match=r"no counterpart of stages\.0\.0\.chain\.2\.conv\.weight"):
        lightnets.models.weights.load_weights(model, lightnets.models.weights.read_weights(path))


# ---------------------------------------------------------------------------------------- container formats


def test_megvii_files_load_with_their_preprocessing(tmp_path):
    name = "shufflenet_v1_g3_x0_5_cifar"
    source = randomized(lightnets.create_model(name))
    train_file = tmp_path / "checkpoint-300000.pth.tar"  # train.py under DataParallel: "module." keys
    torch.save({"state_dict": as_authors(source, "shufflenet_v1", "module.")}, train_file)
    mdl = tmp_path / "model.mdl"  # train.py's last line, the bare state dict
    torch.save(as_authors(source, "shufflenet_v1"), mdl)
    for path in (train_file, mdl):
        model = lightnets.create_model(name, checkpoint=str(path))
        assert same_weights(model, source)
        cfg = model.pretrained_cfg
        assert cfg["channel_order"] == "BGR" and cfg["mean"] == (0.0, 0.0, 0.0) and cfg["std"][0] == 1 / 255
        assert cfg["checkpoint"] == str(path) and "megvii" in cfg["source"]
    assert lightnets.create_model(name, checkpoint=str(train_file)).pretrained_cfg["loaded"] == (
        "weights 'state_dict' of a {'state_dict': ...} file (DataParallel 'module.' prefix stripped)"
    )
    with pytest.raises(CheckpointError, match=r"model\.mdl is a bare state dict with no EMA weights; drop --ema"):
        lightnets.create_model(name, checkpoint=str(mdl), ema=True)


def test_spgnet_training_ema_and_release_files(tmp_path):
    name = "spgnet_s2p6_cifar"
    source, ema_source = randomized(lightnets.create_model(name), 1), randomized(lightnets.create_model(name), 2)
    train_file, ema_file, release = tmp_path / "checkpoint.pth.tar", tmp_path / "ema.pth.tar", tmp_path / "s2p6.tar"
    torch.save({"state_dict": as_authors(source, "spgnet", "module.")}, train_file)  # DDP
    torch.save({"state_dict_ema": as_authors(ema_source, "spgnet")}, ema_file)  # their ModelEma: plain keys
    torch.save({"state_dict": as_authors(source, "spgnet")}, release)  # README layout
    for path, expected in ((train_file, source), (ema_file, ema_source), (release, source)):
        model = lightnets.create_model(name, checkpoint=str(path))
        assert same_weights(model, expected)
        assert model.pretrained_cfg["std"] == (1.0, 1.0, 1.0) and model.pretrained_cfg["channel_order"] == "RGB"
    assert (
        "EMA weights 'state_dict_ema'"
        in lightnets.create_model(name, checkpoint=str(ema_file)).pretrained_cfg["loaded"]
    )
    with pytest.raises(CheckpointError, match=r"has no EMA weights .*drop --ema, or pass the EMA file"):
        lightnets.create_model(name, checkpoint=str(train_file), ema=True)


TINY_PARNET = {"widths": (16, 32, 64, 128), "act_layer": "relu"}


def timm_saver_file(path: Path, weights: dict, ema_weights: dict, args: object) -> None:
    """The keys timm's CheckpointSaver writes (NonDeepNetworks' train.py)."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    state = {"epoch": 119, "arch": "simplenet_repvgg", "state_dict": weights, "optimizer": optimizer.state_dict()}
    state.update(version=2, args=args, state_dict_ema=ema_weights, metric=75.2)
    torch.save(state, path)


def test_parnet_timm_checkpoint_saver_file(tmp_path):
    name = "parnet_s_cifar"
    source, ema_source = (randomized(lightnets.create_model(name, **TINY_PARNET), s) for s in (1, 2))
    path = tmp_path / "model_best.pth.tar"
    args = argparse.Namespace(model="simplenet_repvgg", model_cfg="./models/planes.yaml", lr=0.001, epochs=120)
    timm_saver_file(path, as_authors(source, "parnet"), as_authors(ema_source, "parnet"), args)
    # weights_only=True alone refuses the pickled Namespace; lightnets allows exactly that class.
    with pytest.raises(Exception, match="Namespace"):
        torch.load(path, weights_only=True)
    model = lightnets.create_model(name, checkpoint=str(path), **TINY_PARNET)
    assert same_weights(model, source)  # 'state_dict' by default, as their validate.py loads it
    assert model.pretrained_cfg["loaded"] == "weights 'state_dict' of a timm CheckpointSaver file"
    assert model.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)
    ema = lightnets.create_model(name, checkpoint=str(path), ema=True, **TINY_PARNET)
    assert same_weights(ema, ema_source)
    with pytest.warns(UserWarning, match="act_layer='relu'"):
        lightnets.create_model(name, checkpoint=str(path), widths=TINY_PARNET["widths"])


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_saver_file_with_any_other_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "payload-ran"
    source = lightnets.create_model("parnet_s_cifar", **TINY_PARNET)
    path = tmp_path / "evil.pth.tar"
    args = argparse.Namespace(model="simplenet_repvgg", hook=_RunsCode(marker))
    timm_saver_file(path, as_authors(source, "parnet"), as_authors(source, "parnet"), args)
    with pytest.raises(CheckpointError) as caught:
        lightnets.create_model("parnet_s_cifar", checkpoint=str(path), **TINY_PARNET)
    assert "refused" in str(caught.value) and "system" in str(caught.value) and "\n" not in str(caught.value)
    assert not marker.exists()


def test_asymmnet_port_state_dict_and_unknown_files(tmp_path):
    name = "asymmnet_small_x0_35_cifar"
    source = randomized(lightnets.create_model(name))
    path = tmp_path / "asymmnet.pth"
    torch.save(as_authors(source, "asymmnet", "module."), path)
    model = lightnets.create_model(name, checkpoint=str(path))
    assert same_weights(model, source) and model.pretrained_cfg["std"][0] == pytest.approx(58.393 / 255)
    # A bare state dict in lightnets' own names loads too, without the authors' preprocessing.
    torch.save(source.state_dict(), path)
    model = lightnets.create_model(name, checkpoint=str(path))
    assert same_weights(model, source) and model.pretrained_cfg.get("preprocessing_from") != "weights"
    torch.save({"weights": [1, 2], "note": "x"}, path)
    with pytest.raises(CheckpointError, match=r"is not a weights file lightnets knows \(its keys: 'weights', 'note'\)"):
        lightnets.create_model(name, checkpoint=str(path))


def test_preprocess_flips_to_bgr_and_keeps_0_255():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    megvii = Preprocess((0.0, 0.0, 0.0), (1 / 255,) * 3, 8, channels_last=False, bgr=True)
    assert torch.equal(megvii(images), images.flip(1).float())
    assert torch.equal(Preprocess((0.0,) * 3, (1.0,) * 3, 8, channels_last=False)(images), images.float() / 255)


# ------------------------------------------------------------------------------------------------------- CLI


def test_cli_predict_eval_export_with_an_authors_file(tmp_path, capsys):
    name = "shufflenet_v1_g3_x0_5"
    source = randomized(lightnets.create_model(name, num_classes=2))
    path = tmp_path / "megvii.pth.tar"
    torch.save({"state_dict": as_authors(source, "shufflenet_v1", "module.")}, path)
    folder = shared_file("hymenoptera")
    image = next((folder / "val" / "bees").iterdir())
    flags = ["--model", name, "--checkpoint", str(path), "--model-arg", "num_classes=2"]

    assert main(["predict", *flags, str(image), "--json"]) == 0
    captured = capsys.readouterr()
    predictions = json.loads(captured.out)
    assert {entry["class"] for entry in predictions[0]["top"]} == {0, 1}  # no names in the file: indices
    assert "weights 'state_dict'" in captured.err and "class indices" in captured.err

    assert main(["eval", *flags, "--data", f"folder:{folder}", "--workers", "0", "--batch-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "ants" in out and "bees" in out and "top-1" in out
    # Without the right head: one line naming the file and both counts.
    assert main(["eval", "--model", name, "--checkpoint", str(path), "--data", f"folder:{folder}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err and "(2,)" not in err and "1000" in err

    exported = tmp_path / "megvii.safetensors"
    assert main(["export", *flags, "--format", "safetensors", "--out", str(exported)]) == 0
    assert "channel_order BGR" in capsys.readouterr().out
    reloaded = lightnets.create_model(name, checkpoint=str(exported))
    assert same_weights(reloaded, source) and reloaded.pretrained_cfg["channel_order"] == "BGR"

    import onnx

    onnx_path = tmp_path / "megvii.onnx"
    assert main(["export", *flags, "--format", "onnx", "--input-size", "64", "--out", str(onnx_path)]) == 0
    props = {p.key: json.loads(p.value) for p in onnx.load(str(onnx_path)).metadata_props}
    assert props["channel_order"] == "BGR" and props["std"][0] == pytest.approx(1 / 255)


def test_cli_needs_model_for_a_file_that_does_not_name_it(tmp_path, capsys):
    path = tmp_path / "model.mdl"
    torch.save(as_authors(lightnets.create_model("shufflenet_v1_g3_x0_5_cifar"), "shufflenet_v1"), path)
    assert main(["predict", "--checkpoint", str(path), "x.jpg"]) == 2
    assert "--model NAME" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(path), "--format", "safetensors", "--out", str(tmp_path / "x")]) == 2
    assert "does not name its model; give --model NAME" in capsys.readouterr().err
