"""The operator study: GMAC/s of dense, grouped and depthwise convolutions at equal MACs on this device.

The field's question, measured: how much of a FLOP saving survives as speed once a conv is grouped or depthwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lightnets.measure.latency import synchronised, time_call

__all__ = ["operator_study"]


def _equal_mac_channels(base: int, groups: int) -> int:
    """Channels C with 9*C*C/g == 9*base*base (same MACs as the dense conv), rounded to a multiple of g."""
    exact = base * math.sqrt(groups)
    return max(groups, round(exact / groups) * groups)


def operator_study(
    *,
    base_channels: int = 64,
    resolution: int = 56,
    batch_size: int = 1,
    device: str = "cpu",
    threads: int | None = None,
    min_run_time: float = 0.5,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """GMAC/s of 3x3 convs at equal MACs (dense, grouped g=2..32, depthwise) and of 1x1 dense vs grouped."""
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    device_ = torch.device(device)
    cases: list[tuple[str, int, int, int]] = [("conv3x3", 3, base_channels, 1)]
    cases += [("conv3x3", 3, _equal_mac_channels(base_channels, g), g) for g in (2, 4, 8, 16, 32)]
    # Depthwise: 9*C*HW MACs equals the dense 9*C0^2*HW when C = C0^2.
    cases.append(("conv3x3", 3, base_channels * base_channels, base_channels * base_channels))
    cases += [("conv1x1", 1, base_channels * 2, 1)]
    cases += [("conv1x1", 1, _equal_mac_channels(base_channels * 2, g), g) for g in (2, 4, 8)]
    rows = []
    for op, kernel, channels, groups in cases:
        conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=groups, bias=False).to(device_).eval()
        x = torch.randn(batch_size, channels, resolution, resolution, device=device_)
        macs = kernel * kernel * channels * (channels // groups) * resolution * resolution
        call = synchronised(lambda conv=conv, x=x: conv(x), device_)
        with torch.inference_mode():
            measurement = time_call(call, threads, min_run_time, 3, op)
        kind = "dense" if groups == 1 else "depthwise" if groups == channels else f"grouped g={groups}"
        row = {
            "op": op,
            "kind": kind,
            "groups": groups,
            "channels": channels,
            "resolution": resolution,
            "batch_size": batch_size,
            "macs": macs,
            "latency_ms_median": 1e3 * measurement.median,
            "latency_ms_iqr": 1e3 * measurement.iqr,
            "gmacs_per_s": batch_size * macs / measurement.median / 1e9,
            "device": device,
            "threads": threads,
        }
        rows.append(row)
        log(
            f"{op} {kind:15s} C={channels:5d} @ {resolution}x{resolution}: {row['macs'] / 1e6:7.1f} MMACs "
            f"{row['latency_ms_median']:8.3f} ms  {row['gmacs_per_s']:7.2f} GMAC/s"
        )
    return rows
