"""Is the depthwise weight gradient worth writing ourselves? oneDNN's kernel against three plain-PyTorch rewrites.

The weight gradient of a depthwise convolution is what makes AsymmNet's (5x5) and ShuffleNet's (3x3) depthwise
layers the slowest operators of their training step on a CPU (3-7 GMAC/s, see docs/results/train_speed.md). This
times, at shapes of those networks' CIFAR forms (batch 64), contiguous and channels-last:

- forward, input gradient and weight gradient as PyTorch computes them (``aten.convolution_backward``);
- the weight gradient rewritten three ways, each checked against the reference:
  ``shifted``: one multiply-and-sum pass per kernel offset over the padded input;
  ``swapped``: a grouped convolution with batch and channels swapped, the output gradient as its kernel;
  ``rows``: per-offset sums over channels-last rows (channels contiguous).

    python benchmarks/depthwise_weight_grad.py

Nothing else may run meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils import benchmark

from lightnets.device import describe_cpu_features, device_name

SHAPES = [  # (batch, channels, size, kernel, stride)
    (64, 96, 16, 5, 1),
    (64, 240, 8, 5, 1),
    (64, 72, 32, 3, 1),
    (64, 120, 16, 5, 2),
]


def milliseconds(fn: Callable[..., object], *args: object) -> float:
    timer = benchmark.Timer("fn(*args)", globals={"fn": fn, "args": args})
    return timer.blocked_autorange(min_run_time=1.0).median * 1e3


def forward(x: torch.Tensor, weight: torch.Tensor, stride: int, pad: int) -> torch.Tensor:
    return F.conv2d(x, weight, stride=stride, padding=pad, groups=x.shape[1])


def backward(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int, pad: int, which: int
) -> torch.Tensor:
    """One gradient of the depthwise convolution as PyTorch (oneDNN) computes it: 0 the input's, 1 the weight's."""
    mask = [which == 0, which == 1, False]
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], x.shape[1], mask
    )[which]


def input_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int, pad: int) -> torch.Tensor:
    return backward(grad, x, weight, stride, pad, 0)


def reference(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int, pad: int) -> torch.Tensor:
    return backward(grad, x, weight, stride, pad, 1)


def shifted(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int, pad: int) -> torch.Tensor:
    k, (_, channels, out_h, out_w) = weight.shape[-1], grad.shape
    padded = F.pad(x, (pad,) * 4)
    out = torch.empty(channels, k, k)
    for i in range(k):
        for j in range(k):
            window = padded[:, :, i : i + (out_h - 1) * stride + 1 : stride, j : j + (out_w - 1) * stride + 1 : stride]
            out[:, i, j] = (window * grad).sum((0, 2, 3))
    return out.unsqueeze(1)


def swapped(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int, pad: int) -> torch.Tensor:
    k, (batch, channels, _, _) = weight.shape[-1], grad.shape
    padded = F.pad(x, (pad,) * 4)
    inputs = padded.transpose(0, 1).reshape(1, channels * batch, padded.shape[2], padded.shape[3])
    out = F.conv2d(inputs, grad.transpose(0, 1).contiguous(), groups=channels, dilation=stride)
    return out[0, :, :k, :k].unsqueeze(1).contiguous()


def rows(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int, pad: int) -> torch.Tensor:
    k, (_, channels, out_h, out_w) = weight.shape[-1], grad.shape
    padded = F.pad(x, (pad,) * 4).permute(0, 2, 3, 1)
    grad_rows = grad.permute(0, 2, 3, 1)
    out = torch.empty(k, k, channels)
    for i in range(k):
        for j in range(k):
            window = padded[:, i : i + (out_h - 1) * stride + 1 : stride, j : j + (out_w - 1) * stride + 1 : stride]
            torch.sum(window * grad_rows, (0, 1, 2), out=out[i, j])
    return out.permute(2, 0, 1).unsqueeze(1)


def main() -> None:
    threads = torch.get_num_threads()
    print(f"{device_name('cpu')} ({describe_cpu_features()}), {threads} threads, torch {torch.__version__}")
    print("(N, C, H, k, stride) layout: forward, input grad, weight grad by oneDNN | rewrites of the weight grad (ms)")
    for batch, channels, size, k, stride in SHAPES:
        for channels_last in (False, True):
            x = torch.randn(batch, channels, size, size)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            weight, pad = torch.randn(channels, 1, k, k), k // 2
            grad = torch.randn_like(forward(x, weight, stride, pad))
            ref = reference(grad, x, weight, stride, pad)
            cells = []
            for rewrite in (shifted, swapped, rows):
                error = ((rewrite(grad, x, weight, stride, pad) - ref).abs().max() / ref.abs().max()).item()
                ms = milliseconds(rewrite, grad, x, weight, stride, pad)
                cells.append(f"{rewrite.__name__} {ms:.2f} (rel err {error:.0e})")
            layout = "channels-last" if channels_last else "contiguous"
            print(
                f"{(batch, channels, size, k, stride)} {layout}: {milliseconds(forward, x, weight, stride, pad):.2f}, "
                f"{milliseconds(input_grad, grad, x, weight, stride, pad):.2f}, "
                f"{milliseconds(reference, grad, x, weight, stride, pad):.2f} | " + ", ".join(cells)
            )


if __name__ == "__main__":
    main()
