"""Collect finished run directories into a results page: ``OUT.json``, ``OUT.md`` and ``OUT/<run>-curves.png``.

python benchmarks/summarize_runs.py runs/cpu-cifar10/* --out docs/results/cpu_cifar10 --command "..."
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
from pathlib import Path

import torch
import yaml

import lightnets


def read_run(run_dir: Path) -> dict:
    settings = yaml.safe_load((run_dir / "args.yaml").read_text())
    with open(run_dir / "summary.csv") as handle:
        history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    wall = run_dir / "wall_seconds"
    model_kwargs = {k: v for k, v in settings.get("model_kwargs", {}).items()}
    model = lightnets.create_model(settings["model"], num_classes=10, **model_kwargs)
    stats = lightnets.complexity(model, settings["input_size"])
    last = history[-1]
    return {
        "run": run_dir.name,
        "model": settings["model"],
        "model_kwargs": model_kwargs,
        "params": stats.params,
        "macs": stats.macs,
        "epochs": len(history),
        "batch_size": settings["batch_size"],
        "lr": settings["lr"],
        "device": settings["device"],
        "final_val_top1": last["val_top1"],
        "best_val_top1": max(r["val_top1"] for r in history),
        "final_train_loss": last["train_loss"],
        "mean_train_images_per_second": sum(r["images_per_second"] for r in history) / len(history),
        "wall_seconds": float(wall.read_text()) if wall.exists() else sum(r["epoch_seconds"] for r in history),
        "history": history,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="path prefix, e.g. docs/results/cpu_cifar10")
    parser.add_argument("--title", default="Training results")
    parser.add_argument("--command", default="", help="the command that produced the runs")
    args = parser.parse_args()

    runs = [read_run(r) for r in args.runs if (r / "summary.csv").is_file()]
    args.out.mkdir(parents=True, exist_ok=True)
    environment = {
        "machine": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightnets": lightnets.__version__,
    }
    args.out.with_suffix(".json").write_text(
        json.dumps({"command": args.command, "environment": environment, "runs": runs}, indent=2) + "\n"
    )
    lines = [
        f"# {args.title}",
        "",
        f"Produced by `{args.command}` ({environment['torch']}, {environment['cpu_threads']} threads). "
        "Default recipe (SGD + Nesterov, lr 0.1 x batch/256, 1 warmup epoch then cosine, wd 5e-4, label "
        "smoothing 0.1, crop + flip); accuracy is top-1 on the 10,000 test images after the last epoch. "
        "Raw figures: the JSON file beside this page.",
        "",
        "| run | model | params (M) | MACs (M) | epochs | test top-1 (%) | train img/s | wall time (min) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        kwargs = f" ({', '.join(f'{k}={v}' for k, v in run['model_kwargs'].items())})" if run["model_kwargs"] else ""
        lines.append(
            f"| {run['run']} | `{run['model']}`{kwargs} | {run['params'] / 1e6:.2f} | {run['macs'] / 1e6:.1f} | "
            f"{run['epochs']} | {run['final_val_top1']:.2f} | {run['mean_train_images_per_second']:.0f} | "
            f"{run['wall_seconds'] / 60:.1f} |"
        )
    lines.append("")
    for run_dir, run in zip([r for r in args.runs if (r / "summary.csv").is_file()], runs):
        curves = run_dir / "curves.png"
        if curves.is_file():
            target = args.out / f"{run['run']}-curves.png"
            shutil.copyfile(curves, target)
            lines += [f"## {run['run']}", "", f"![{run['run']} curves]({args.out.name}/{target.name})", ""]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines[: 10 + len(runs)]))


if __name__ == "__main__":
    main()
