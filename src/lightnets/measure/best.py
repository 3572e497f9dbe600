"""The answer ``bench`` ends with: per model and batch size, the fastest backend x precision that ran, its speed-up
over PyTorch eager fp32 and, for a lower precision with a checkpoint and data, its measured top-1 change; and
every place where INT8 ran slower than fp32 on the same backend, which happens on CPUs without VNNI or AMX and
for graphs whose quantised patterns the runtime executes badly."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightnets.tables import format_table

__all__ = ["best_paths", "int8_slower", "print_best_paths"]


def _key(row: dict[str, Any]) -> tuple[str, int, int]:
    return row["model"], row["batch_size"], row["input_size"]


def best_paths(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (model, batch size, input size): the fastest row, and its speed-up over eager fp32 (None
    when eager fp32 was not measured)."""
    groups: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(_key(row), []).append(row)
    best = []
    for (model, batch, size), group in groups.items():
        fastest = min(group, key=lambda r: r["latency_ms_median"])
        eager = [r for r in group if r["backend"] == "eager" and r.get("precision", "fp32") == "fp32"]
        eager_ms = eager[0]["latency_ms_median"] if eager else None
        best.append(
            {
                "model": model,
                "batch_size": batch,
                "input_size": size,
                "backend": fastest["backend"],
                "precision": fastest.get("precision", "fp32"),
                "ran": fastest.get("ran", fastest.get("precision", "fp32")),
                "latency_ms_median": fastest["latency_ms_median"],
                "eager_fp32_ms": eager_ms,
                "speedup_vs_eager_fp32": eager_ms / fastest["latency_ms_median"] if eager_ms else None,
                "top1_change": fastest.get("top1_change"),
            }
        )
    return best


def int8_slower(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The (model, backend, batch) where the INT8 row is slower than the same backend's fp32 row."""
    fp32 = {(*_key(r), r["backend"]): r for r in rows if r.get("precision", "fp32") == "fp32"}
    slower = []
    for row in rows:
        base = fp32.get((*_key(row), row["backend"]))
        if row.get("precision") == "int8" and base and row["latency_ms_median"] > base["latency_ms_median"]:
            slower.append(
                {
                    "model": row["model"],
                    "backend": row["backend"],
                    "batch_size": row["batch_size"],
                    "int8_ms": row["latency_ms_median"],
                    "fp32_ms": base["latency_ms_median"],
                }
            )
    return slower


def print_best_paths(
    rows: Sequence[dict[str, Any]], skipped: Sequence[dict[str, str]] = (), markdown: bool = False
) -> list[dict[str, Any]]:
    """Print the fastest path per model and batch, INT8 slow-downs and skipped combinations; return the paths."""
    best = best_paths(rows)
    headers = ["model", "batch", "fastest", "ran", "ms", "eager fp32 ms", "speed-up", "top-1 change (pt)"]
    table = [
        [
            b["model"],
            b["batch_size"],
            f"{b['backend']} {b['precision']}",
            b["ran"],
            f"{b['latency_ms_median']:.2f}",
            "" if b["eager_fp32_ms"] is None else f"{b['eager_fp32_ms']:.2f}",
            "" if b["speedup_vs_eager_fp32"] is None else f"x{b['speedup_vs_eager_fp32']:.1f}",
            "" if b["top1_change"] is None else f"{b['top1_change']:+.2f}",
        ]
        for b in best
    ]
    print("fastest path per model and batch size:")
    print(format_table(headers, table, markdown=markdown))
    for slow in int8_slower(rows):
        print(
            f"note: INT8 is slower than fp32 for {slow['model']} on {slow['backend']} at batch {slow['batch_size']} "
            f"({slow['int8_ms']:.2f} ms against {slow['fp32_ms']:.2f} ms)"
        )
    for skip in skipped:
        print(f"skipped: {skip['model']} {skip['backend']} {skip['precision']}: {skip['reason']}")
    return best
