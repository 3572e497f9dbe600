"""Fine-tuning on real data: a shipped CIFAR-10 weight against the same network from scratch, on hymenoptera.

Two `lightnets train` runs as a user types them, on `../shared/data/hymenoptera` (photos of ants and bees of
mixed sizes and modes, with train/ and val/ folders), with the same epochs, batch, seed and every other setting;
one starts
from `--weights` (the package's shipped file for the model: `lightnets.models.pretrained.pretrained_path`), the
other from lightnets' initialisation. The input size is the model's own (32 for a `_cifar` form), so the
weights see the resolution they were trained at. The fine-tuned run takes the weights' preprocessing (CIFAR-10's
mean and std); the run from scratch takes the folder default (ImageNet's), as `--normalize auto` does for each.

    python benchmarks/finetune_hymenoptera.py --model asymmnet_small_x0_35_cifar --epochs 30

Writes docs/results/finetune_hymenoptera.{md,json,png}: both curves of validation top-1 and both final and best
figures. Not a test: it prints what it measured.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lightnets.device import describe_cpu_features, device_name
from lightnets.files import atomic_write
from lightnets.models.pretrained import pretrained_cfg, pretrained_path


def run_train(name: str, data: str, out: Path, epochs: int, batch: int, seed: int, weights: Path | None) -> list[dict]:
    command = [sys.executable, "-m", "lightnets", "train", "--model", name, "--data", data, "--epochs", str(epochs)]
    command += ["--batch-size", str(batch), "--seed", str(seed), "--out", str(out), "--quiet"]
    if weights is not None:
        command += ["--weights", str(weights)]
    print("$ " + shlex.join(command[2:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    print(f"  {time.perf_counter() - started:.0f} s", flush=True)
    with open(out / "summary.csv") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def plot(curves: dict[str, list[dict]], name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=120)
    for label, history in curves.items():
        axis.plot(
            [r["epoch"] for r in history], [r["val_top1"] for r in history], marker="o", markersize=3, label=label
        )
    axis.set_xlabel("epoch")
    axis.set_ylabel("hymenoptera val top-1 (%)")
    axis.set_title(f"{name} on hymenoptera:\nfrom the shipped CIFAR-10 weights vs from scratch", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def summary(history: list[dict]) -> dict[str, Any]:
    best = max(history, key=lambda r: r["val_top1"])
    return {"final_top1": history[-1]["val_top1"], "best_top1": best["val_top1"], "best_epoch": int(best["epoch"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="asymmnet_small_x0_35_cifar")
    parser.add_argument("--data", default="folder:../shared/data/hymenoptera")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32, help="small: the ~245 training photos give 8 steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=Path("runs/finetune"))
    parser.add_argument("--out", type=Path, default=Path("docs/results/finetune_hymenoptera"))
    args = parser.parse_args()

    weights = pretrained_path(args.model)
    common = (args.model, args.data)
    settings = (args.epochs, args.batch_size, args.seed)
    curves = {
        "from the shipped CIFAR-10 weights": run_train(*common, args.runs / "pretrained", *settings, weights),
        "from scratch": run_train(*common, args.runs / "scratch", *settings, None),
    }
    cfg = pretrained_cfg(args.model)
    result = {
        "command": "python benchmarks/finetune_hymenoptera.py " + shlex.join(sys.argv[1:]),
        "model": args.model,
        "weights": f"{cfg['file']} (CIFAR-10 top-1 {cfg['top1']} %)",
        "data": args.data,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "device": device_name("cpu"),
        "cpu_features": describe_cpu_features(),
        "runs": {label: {**summary(h), "curve": [r["val_top1"] for r in h]} for label, h in curves.items()},
    }
    plot(curves, args.model, args.out.with_suffix(".png"))
    lines = [
        f"# Fine-tuning `{args.model}` on hymenoptera: shipped CIFAR-10 weights against from scratch",
        "",
        f"Produced by `{result['command']}` on {result['device']} ({result['cpu_features']}).",
        "",
        f"Two `lightnets train` runs on `{args.data}` (ants/bees, its train/ and val/ folders), {args.epochs} epochs, "
        f"batch "
        f"{args.batch_size}, seed {args.seed}, the model's own 32x32 input, every other setting the default. One "
        f"starts from `--weights` = the shipped `{cfg['file']}` (its classifier replaced: 10 -> 2 classes, its "
        "CIFAR-10 mean/std used); the other from lightnets' initialisation (ImageNet mean/std, the folder default).",
        "",
        "| start | final val top-1 | best val top-1 (epoch) |",
        "|---|---:|---:|",
    ]
    for label, run in result["runs"].items():
        lines.append(f"| {label} | {run['final_top1']:.2f} | {run['best_top1']:.2f} ({run['best_epoch']}) |")
    lines += ["", f"![val top-1 per epoch]({args.out.with_suffix('.png').name})", ""]
    page = "\n".join(lines) + "\n"
    atomic_write(args.out.with_suffix(".md"), page)
    atomic_write(args.out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    print(page)


if __name__ == "__main__":
    main()
