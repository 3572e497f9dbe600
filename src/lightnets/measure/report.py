"""``lightnets report``: bench JSON (and run directories) -> a Markdown table and plots.

Plots: latency against MACs (log-log, labelled points, one colour per family) per backend and batch size,
accuracy against latency when run directories give accuracies, and the operator study's GMAC/s bars.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["FAMILY_COLOURS", "family_of", "label_points", "plot_operator_study", "save_figure", "write_report"]

FAMILY_COLOURS = {
    "SPGNet": "#d62728",
    "ShuffleNet v1": "#1f77b4",
    "ParNet": "#9467bd",
    "AsymmNet": "#2ca02c",
    "torchvision": "#7f7f7f",
    "timm": "#ff7f0e",
}


def family_of(name: str) -> str:
    for prefix, family in (
        ("spgnet", "SPGNet"),
        ("shufflenet_v1", "ShuffleNet v1"),
        ("parnet", "ParNet"),
        ("asymmnet", "AsymmNet"),
        ("tv:", "torchvision"),
        ("timm:", "timm"),
    ):
        if name.startswith(prefix):
            return family
    return "other"


def save_figure(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")


def load_accuracies(run_dirs: Sequence[Path]) -> dict[str, float]:
    """Best held-out top-1 per model name, from run directories' summary.csv and args.yaml."""
    import yaml

    accuracies: dict[str, float] = {}
    for run_dir in run_dirs:
        settings = yaml.safe_load((Path(run_dir) / "args.yaml").read_text())
        with open(Path(run_dir) / "summary.csv") as handle:
            top1 = max(float(row["val_top1"]) for row in csv.DictReader(handle))
        name = settings["model"]
        accuracies[name] = max(top1, accuracies.get(name, 0.0))
    return accuracies


def label_points(axis, points: Sequence[tuple[float, float, str]]) -> None:
    """Name every point, moving a label up or down a line at a time until it overlaps no label placed before.

    Call after the axis scales are set: overlap is judged in display pixels.
    """
    axis.autoscale_view()
    pixels_per_point = axis.figure.dpi / 72
    height, char_width = 9 * pixels_per_point, 4.3 * pixels_per_point  # 7 pt text
    placed: list[tuple[float, float, float, float]] = []
    for x, y, text in sorted(points, key=lambda p: (p[1], p[0])):
        px, py = axis.transData.transform((x, y))
        width = char_width * len(text)
        for shift in (0, -1, 1, -2, 2, -3, 3, -4, 4):
            offset = 3 + shift * 10
            box = (px + 4 * pixels_per_point, py + offset * pixels_per_point, width, height)
            if not any(_boxes_overlap(box, other) for other in placed):
                break
        placed.append(box)
        leader = {"arrowstyle": "-", "linewidth": 0.4, "color": "0.5"} if shift else None
        axis.annotate(text, (x, y), fontsize=7, xytext=(4, offset), textcoords="offset points", arrowprops=leader)


def _boxes_overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def plot_latency_vs_macs(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    figure = Figure(figsize=(8, 6))
    axis = figure.subplots()
    seen: set[str] = set()
    for row in rows:
        family = family_of(row["model"])
        axis.scatter(
            row["macs"] / 1e6,
            row["latency_ms_median"],
            color=FAMILY_COLOURS.get(family, "black"),
            label=family if family not in seen else None,
            s=36,
        )
        seen.add(family)
    axis.set(
        xscale="log", yscale="log", xlabel="MACs per image (M, log)", ylabel="median latency (ms, log)", title=title
    )
    label_points(axis, [(row["macs"] / 1e6, row["latency_ms_median"], row["model"]) for row in rows])
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    save_figure(figure, path)


def plot_accuracy_vs_latency(
    rows: Sequence[dict[str, Any]], accuracies: dict[str, float], path: Path, title: str
) -> None:
    figure = Figure(figsize=(8, 6))
    axis = figure.subplots()
    for row in rows:
        if row["model"] not in accuracies:
            continue
        family = family_of(row["model"])
        axis.scatter(row["latency_ms_median"], accuracies[row["model"]], color=FAMILY_COLOURS.get(family, "black"))
    points = [(r["latency_ms_median"], accuracies[r["model"]], r["model"]) for r in rows if r["model"] in accuracies]
    axis.set(xscale="log", xlabel="median latency (ms, log)", ylabel="top-1 (%)", title=title)
    label_points(axis, points)
    axis.grid(alpha=0.3)
    save_figure(figure, path)


def plot_operator_study(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Bars of GMAC/s per convolution kind at equal MACs, 3x3 and 1x1 side by side."""
    figure = Figure(figsize=(10, 4.5))
    axes = figure.subplots(1, 2, gridspec_kw={"width_ratios": [7, 4]})
    for axis, op in zip(axes, ("conv3x3", "conv1x1")):
        selected = [r for r in rows if r["op"] == op]
        labels = [f"{r['kind']}\nC={r['channels']}" for r in selected]
        values = [r["gmacs_per_s"] for r in selected]
        bars = axis.bar(
            range(len(values)),
            values,
            color=["#1f77b4"] + ["#2ca02c"] * (len(values) - 2) + ["#d62728"]
            if op == "conv3x3"
            else ["#1f77b4"] + ["#2ca02c"] * (len(values) - 1),
        )
        axis.bar_label(bars, fmt="%.1f", fontsize=7)
        axis.set_xticks(range(len(values)), labels, fontsize=7)
        macs = selected[0]["macs"] / 1e6 if selected else 0
        axis.set(ylabel="GMAC/s", title=f"{op} at equal MACs ({macs:.0f} M each)")
        axis.grid(alpha=0.3, axis="y")
    device = rows[0]["device"] if rows else ""
    threads = rows[0]["threads"] if rows else ""
    figure.suptitle(f"Operator speed per MAC on {device} ({threads} threads): higher is better", fontsize=10)
    save_figure(figure, Path(path))


def write_report(bench_files: Sequence[Path], out_dir: Path, run_dirs: Sequence[Path] = ()) -> Path:
    """Markdown table + plots for every (backend, batch size, input size) group of the bench rows."""
    rows: list[dict[str, Any]] = []
    for path in bench_files:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, list) or (data and "latency_ms_median" not in data[0]):
            raise ValueError(f"{path} is not a `lightnets bench --out` file (a JSON list of rows)")
        rows.extend(data)
    accuracies = load_accuracies(run_dirs) if run_dirs else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# Benchmark report", ""]
    groups = sorted({(r["backend"], r["batch_size"], r["input_size"], r.get("device", "cpu")) for r in rows})
    for backend, batch, size, device in groups:
        selected = sorted(
            (
                r
                for r in rows
                if (r["backend"], r["batch_size"], r["input_size"], r.get("device", "cpu"))
                == (backend, batch, size, device)
            ),
            key=lambda r: r["latency_ms_median"],
        )
        stem = f"{device}_{backend}_b{batch}_{size}"
        title = f"{backend}, batch {batch}, {size}x{size}, {device}"
        plot_latency_vs_macs(selected, out_dir / f"latency_vs_macs_{stem}.png", title)
        lines += [f"## {title}", "", f"![latency vs MACs](latency_vs_macs_{stem}.png)", ""]
        header = "| model | family | deploy | params (M) | MACs (M) | median ms | IQR ms | img/s | GMAC/s | peak MB |"
        if accuracies:
            header += " top-1 (%) |"
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        for r in selected:
            line = (
                f"| {r['model']} | {family_of(r['model'])} | {r['deploy']} | {r['params'] / 1e6:.3f} | "
                f"{r['macs'] / 1e6:.1f} | {r['latency_ms_median']:.2f} | {r['latency_ms_iqr']:.2f} | "
                f"{r['images_per_s']:.1f} | {r['gmacs_per_s']:.2f} | {r['peak_memory_mb']:.1f} |"
            )
            if accuracies:
                accuracy = accuracies.get(r["model"])
                line += f" {accuracy:.2f} |" if accuracy is not None else " |"
            lines.append(line)
        lines.append("")
        if accuracies and any(r["model"] in accuracies for r in selected):
            plot_accuracy_vs_latency(selected, accuracies, out_dir / f"accuracy_vs_latency_{stem}.png", title)
            lines += [f"![accuracy vs latency](accuracy_vs_latency_{stem}.png)", ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    return report
