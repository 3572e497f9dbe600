"""``lightnets summary NAME --profile train``: time sorted into layer types, with the MACs each type does."""

from __future__ import annotations

import torch
from torch import nn

from lightnets.cli import main
from lightnets.measure.training_profile import profile_training


class Mixed(nn.Module):
    """One convolution of each kind the profile tells apart, then a classifier."""

    default_input_size = 8
    num_classes = 5

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Conv2d(3, 12, 3, padding=1, bias=False)  # the first: no gradient for its input
        self.grouped = nn.Conv2d(12, 12, 3, stride=2, padding=1, groups=3, bias=False)
        self.depthwise = nn.Conv2d(12, 12, 5, padding=2, groups=12, bias=False)
        self.pointwise = nn.Conv2d(12, 16, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pointwise(self.depthwise(self.grouped(self.dense(x))))
        return self.head(torch.relu(self.bn(x)).mean((2, 3)))


def test_each_convolution_kind_gets_its_time_and_its_macs() -> None:
    batch, steps = 4, 2
    profile = profile_training(Mixed(), name="mixed", batch=batch, steps=steps, warmup=1)
    rows = {row.kind: row for row in profile.rows}
    # forward MACs per image: output elements x input channels per group x kernel area
    forward = {
        "dense conv 3x3": 12 * 8 * 8 * 3 * 9,
        "grouped conv 3x3": 12 * 4 * 4 * 4 * 9,
        "depthwise conv 5x5": 12 * 4 * 4 * 1 * 25,
        "pointwise conv 1x1": 16 * 4 * 4 * 12,
    }
    for kind, macs in forward.items():
        # backward computes the weight gradient and, except for the first layer, the input gradient
        passes = 2 if kind.startswith("dense") else 3
        assert rows[kind].macs == batch * macs * passes, kind
        assert rows[kind].forward_ms > 0 and rows[kind].backward_ms > 0
    assert rows["linear"].macs > 0 and rows["batch norm"].macs == 0
    assert rows["optimizer step"].update_ms > 0 and rows["optimizer step"].forward_ms == 0
    table = profile.format()
    assert "depthwise conv 5x5" in table and "GMAC/s" in table and "img/s" in table


def test_the_command_prints_the_table(capsys) -> None:
    args = ["summary", "shufflenet_v1_g3_x0_5_cifar", "--profile", "train", "--batch-size", "2", "--steps", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "grouped conv 1x1" in out and "depthwise conv 3x3" in out and "batch norm" in out
    assert main(["summary", "shufflenet_v1_g3_x0_5_cifar", "--profile", "train", "--steps", "0"]) == 2
    assert "invalid --steps 0: expected an integer >= 1" in capsys.readouterr().err
