import subprocess
import sys

import pytest

from lightnets.cli import main


def test_models_table(capsys):
    assert main(["models", "spgnet_s2p6*,tv:mobilenet_v2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["model", "input", "params"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"spgnet_s2p6", "spgnet_s2p6_cifar", "tv:mobilenet_v2"}
    assert rows["spgnet_s2p6"][1:3] == ["224", "4.280"]
    assert rows["spgnet_s2p6_cifar"][1] == "32"
    assert rows["spgnet_s2p6"][4] == "294.1"


def test_models_input_size_and_markdown(capsys):
    assert main(["models", "shufflenet_v1_g3_x1_0", "--input-size", "160", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| model") and "|   160 |" in out


def test_unknown_pattern_is_a_clear_error(capsys):
    assert main(["models", "spgnet_s2p66"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'spgnet_s2p66'" in err and "spgnet_s2p6" in err


@pytest.mark.slow  # a fresh interpreter importing torch
def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "lightnets", "models", "asymmnet_small_x0_35_cifar"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "asymmnet_small_x0_35_cifar" in result.stdout
