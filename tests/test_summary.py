"""lightnets.summary / `lightnets summary`: per-module rows whose totals are lightnets.measure.counting's."""

import re

import pytest

import lightnets
from lightnets.cli import main
from lightnets.measure.per_layer import OUTSIDE

FAMILIES = [
    "spgnet_s2p6_cifar",
    "spgnet_s2p6",
    "shufflenet_v1_g3_x0_5_cifar",
    "shufflenet_v1_g8_x1_0",
    "parnet_s_cifar",
    "asymmnet_large_x0_35",
    "asymmnet_small_x0_5_cifar",
]


@pytest.mark.parametrize("name", FAMILIES)
def test_totals_equal_complexity_in_both_forms(name):
    model = lightnets.create_model(name)
    stats = lightnets.complexity(model)
    deploy = lightnets.reparameterize_model(model)
    for net, params, macs in ((model, stats.params, stats.macs), (deploy, stats.deploy_params, stats.deploy_macs)):
        for depth in (1, 2, 4):
            table = lightnets.summary(net, stats.input_size, depth=depth)
            assert (table.total_params, table.total_macs) == (params, macs)
            assert sum(r.params for r in table.rows) == params and sum(r.macs for r in table.rows) == macs
            # Every MAC of these models is inside some module at any depth: nothing is left over.
            assert all(r.module != OUTSIDE for r in table.rows)


def test_rows_follow_the_forward_pass_with_shapes():
    table = lightnets.summary(lightnets.create_model("parnet_s_cifar"), 32, depth=1)
    names = [r.module for r in table.rows]
    # forward_features calls stream 2 before stream 1 (fuse2's arguments), and that is the order shown.
    assert names[:9] == [
        "stem", "down_to_stream2", "down_to_stream3", "stream2", "stream1", "fuse2", "stream3", "fuse3", "final_down",
    ]  # fmt: skip
    rows = {r.module: r for r in table.rows}
    assert rows["fuse2"].output_shape == "1x384x8x8" and rows["final_down"].output_shape == "1x1280x4x4"
    assert rows["classifier"].kind == "Linear" and rows["classifier"].macs == 1280 * 10
    deep = {r.module: r for r in lightnets.summary(lightnets.create_model("spgnet_s2p6_cifar"), depth=4).rows}
    assert deep["stages.0.0.conv_in"].output_shape == "1x48x32x32"
    # The serial chain is a ModuleList, never called itself: its convs are the rows, with their MACs.
    assert "stages.0.0.chain" not in deep and deep["stages.0.0.chain.1"].output_shape == "1x48x16x16"
    assert deep["stages.0.0.chain.1"].macs == 48 * 8 * 9 * 16 * 16


def test_summary_of_features_and_baselines():
    features = lightnets.create_model("asymmnet_small_x0_35_cifar", features_only=True, out_indices=(0, 1))
    table = lightnets.summary(features, 32, depth=1)
    assert table.total_macs == lightnets.count_macs(features, 32) and table.total_params == lightnets.count_params(
        features
    )
    baseline = lightnets.create_model("tv:resnet18", num_classes=10)
    table = lightnets.summary(baseline, 64, depth=2)
    assert table.total_macs == lightnets.count_macs(baseline, 64)
    assert sum(r.macs for r in table.rows) == table.total_macs
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        lightnets.summary(baseline, 64, depth=0)


def _numbers(text: str, pattern: str) -> tuple[str, ...]:
    match = re.search(pattern, text, re.MULTILINE)
    assert match, text
    return match.groups()


@pytest.mark.parametrize("deploy", [False, True])
def test_cli_summary_totals_equal_cli_models(deploy, capsys):
    name = "spgnet_s2p6_cifar"
    assert main(["models", name]) == 0
    params, deploy_params, macs, deploy_macs = _numbers(
        capsys.readouterr().out, rf"^{name}\s+32\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)$"
    )
    assert main(["summary", name, *(["--deploy"] if deploy else [])]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{name} ({'deploy' if deploy else 'training'} form): input 1x3x32x32")
    assert _numbers(out, r"^params (\S+) M, MACs (\S+) M$") == (
        (deploy_params, deploy_macs) if deploy else (params, macs)
    )
    total_params, total_macs = _numbers(out, r"^total\s+(\S+)\s+(\S+)$")
    stats = lightnets.complexity(lightnets.create_model(name))
    expected = (stats.deploy_params, stats.deploy_macs) if deploy else (stats.params, stats.macs)
    assert (int(total_params.replace(",", "")), int(total_macs.replace(",", ""))) == expected


def test_cli_summary_errors(capsys):
    assert main(["summary", "spgnet_s2p6_cifar", "--depth", "0"]) == 2
    assert "lightnets summary: error: invalid --depth 0: expected an integer >= 1" in capsys.readouterr().err
    assert main(["summary", "spgnet_s2p6_cifar", "--input-size", "0"]) == 2
    assert "lightnets summary: error: invalid --input-size 0: expected an integer >= 1" in capsys.readouterr().err
    assert main(["summary", "spgnet_s2p66"]) == 2
    assert "closest: spgnet_s2p6" in capsys.readouterr().err
