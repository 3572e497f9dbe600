"""Damaged files given to eval, predict and create_model: each refused with one line that names the file and says
what is wrong; no traceback."""

import json
import struct

import pytest
import torch

import lightnets
from lightnets.cli import main
from lightnets.deploy import export_safetensors

from .conftest import shared_file
from .test_reliability import one_line_error

IMAGE = "hymenoptera/val/ants/Hormiga.jpg"


def safetensors_file(path, header: dict, declared_length: int | None = None) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if declared_length is None else declared_length) + text + bytes(16))


@pytest.mark.parametrize(
    ("header", "length", "expected"),
    [
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 10**6, "invalid header length"),
        ({"w": {"dtype": "Q99", "shape": [4], "data_offsets": [0, 16]}}, None, "unknown variant `Q99`"),
    ],
    ids=["length", "dtype"],
)
def test_a_safetensors_header_that_lies_is_one_line(tmp_path, capsys, header, length, expected):
    weights = tmp_path / "lies.safetensors"
    safetensors_file(weights, header, length)
    with pytest.raises(ValueError, match="not a readable safetensors file") as caught:
        lightnets.create_model("spgnet_s2p6_cifar", checkpoint=str(weights))
    assert str(weights) in str(caught.value) and expected in str(caught.value) and "\n" not in str(caught.value)
    data = f"folder:{shared_file('hymenoptera')}"
    assert main(["eval", "--checkpoint", str(weights), "--model", "spgnet_s2p6_cifar", "--data", data]) == 2
    assert f"{weights} is not a readable safetensors file" in one_line_error(capsys, "eval")


def test_an_onnx_file_of_random_bytes_is_one_line(tmp_path, capsys):
    model = tmp_path / "random.onnx"
    model.write_bytes(torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(0)).byte().numpy())
    assert main(["eval", "--checkpoint", str(model), "--data", f"folder:{shared_file('hymenoptera')}"]) == 2
    assert f"{model} is not a readable ONNX file" in one_line_error(capsys, "eval")
    assert main(["predict", "--checkpoint", str(model), str(shared_file(IMAGE))]) == 2
    assert f"{model} is not a readable ONNX file" in one_line_error(capsys, "predict")


def test_an_openvino_model_without_its_weights_is_one_line(tmp_path, capsys):
    model = tmp_path / "m.xml"
    assert main(["export", "--model", "shufflenet_v1_g3_x0_25_cifar", "--format", "openvino", "--out", str(model)]) == 0
    capsys.readouterr()
    model.with_suffix(".bin").unlink()
    assert main(["predict", "--checkpoint", str(model), str(shared_file(IMAGE))]) == 2
    assert f"OpenVINO model {model} has no m.bin beside it (its weights)" in one_line_error(capsys, "predict")
    assert main(["eval", "--checkpoint", str(model), "--data", f"folder:{shared_file('hymenoptera')}"]) == 2
    assert "has no m.bin beside it" in one_line_error(capsys, "eval")


def test_weights_of_another_family_are_one_line(tmp_path, capsys):
    source = lightnets.create_model("shufflenet_v1_g3_x0_25_cifar")
    exported = export_safetensors(
        source, tmp_path / "shuffle.safetensors", model_name="shufflenet_v1_g3_x0_25_cifar", model_kwargs={}
    )
    with pytest.raises(ValueError, match=r"sidecar shuffle\.json says 'shufflenet_v1_g3_x0_25_cifar'") as caught:
        lightnets.create_model("spgnet_s2p6_cifar", checkpoint=str(exported))
    assert str(exported) in str(caught.value)
    bare = tmp_path / "shuffle.pth"
    torch.save({"state_dict": source.state_dict()}, bare)
    with pytest.raises(ValueError, match="do not fit model 'spgnet_s2p6_cifar'") as caught:
        lightnets.create_model("spgnet_s2p6_cifar", checkpoint=str(bare))
    assert str(bare) in str(caught.value) and "\n" not in str(caught.value)
    data = f"folder:{shared_file('hymenoptera')}"
    assert main(["eval", "--checkpoint", str(bare), "--model", "spgnet_s2p6_cifar", "--data", data]) == 2
    assert f"weights in {bare}" in one_line_error(capsys, "eval")
